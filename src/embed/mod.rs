//! Embedding models: the `Embedder` contract and the registry of configured models.
//!
//! Every model the service may write or query with is registered once at start-up in a
//! `ModelRegistry`; the rest of the service looks models up by id and never builds one.
//! `builtin` holds the two offline hash models that make the service usable without a provider;
//! `openai` speaks the OpenAI-compatible embeddings API (paced by `pacing`); `registry_file`
//! builds the registry from `reembed.toml`.

pub mod background;
pub mod builtin;
pub mod openai;
pub mod pacing;
pub mod registry_file;

use std::sync::Arc;
use std::time::Duration;

use serde::Serialize;

use crate::domain::{BackfillLimits, Bounds, Pace, estimate_tokens};

use crate::index::GraphSettings;
use builtin::HashEmbedder;

/// The public description of one model: an element of `models` in `GET /v1/models`
/// (API.md, "Models").
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct ModelInfo {
    /// The id that migrations, routing and the store use to name the model.
    pub id: String,
    /// Who computes the vectors (`builtin` for the hash models).
    pub provider: String,
    /// The length of every vector the model returns.
    pub dimensions: usize,
}

/// A backfill batch's vectors and the tokens the provider billed for them.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Embedded {
    /// One vector per text, in the order of the texts.
    pub vectors: Vec<Vec<f32>>,
    /// The tokens the provider's answers reported (`usage`); `None` for a model that reports
    /// none, whose tokens the caller estimates.
    pub tokens: Option<u64>,
}

impl Embedded {
    /// Vectors of a model that reports no tokens.
    pub fn unreported(vectors: Vec<Vec<f32>>) -> Self {
        Self {
            vectors,
            tokens: None,
        }
    }
}

/// Who an embedding is for. Every model serves two lanes: a client's write or query waits
/// for its answer, so it goes first, never behind the backfill, and has its own share of the
/// model's rate budget; the backfill only needs its vectors eventually and takes what
/// interactive traffic leaves (`pacing`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Lane {
    /// A client request (write or query) is waiting.
    Interactive,
    /// A backfill batch.
    Backfill,
}

/// Why a batch could not be embedded; the variant tells the caller whether to retry.
#[derive(Debug, thiserror::Error)]
pub enum EmbedError {
    /// Transient: the provider is down, overloaded or misbehaving; the same input may succeed
    /// later.
    #[error("embedding provider unavailable: {0}")]
    Unavailable(String),
    /// Permanent for this input: retrying the same text will fail the same way.
    #[error("input rejected by the model: {0}")]
    Rejected(String),
    /// Permanent for every input: the provider refuses us (bad credentials, wrong URL or model
    /// name) or answers in a shape the registry does not promise. Unlike `Rejected` no text is
    /// to blame, so no document may be skipped for it; an operator must fix the configuration.
    #[error("embedding provider misconfigured: {0}")]
    Misconfigured(String),
}

/// A model that turns texts into vectors; implemented by the built-in models and by providers.
#[async_trait::async_trait]
pub trait Embedder: Send + Sync + 'static {
    /// The length of every vector `embed` returns.
    fn dimensions(&self) -> usize;

    /// Embeds a batch: one L2-normalised vector of `dimensions()` per text, in the order of
    /// `texts`. Batches let providers amortise a request over many texts.
    async fn embed(&self, texts: &[String]) -> Result<Vec<Vec<f32>>, EmbedError>;

    /// Embeds documents for the backfill (`Lane::Backfill`): the same vectors as `embed`, but
    /// behind every client request of the model. A provider paces them in the backfill lane;
    /// a model that computes them on this machine's CPU does it at background priority
    /// (`background`), so that a backfill takes only the CPU that requests leave idle. By
    /// default, `embed`, reporting no tokens.
    ///
    /// Also returns the tokens the provider billed, when it reports them: a migration's cost
    /// is counted from them (`domain::cost`).
    async fn embed_backfill(&self, texts: &[String]) -> Result<Embedded, EmbedError> {
        self.embed(texts).await.map(Embedded::unreported)
    }

    /// Embeds a search query. Separate from `embed` because instruction-tuned models (e5,
    /// bge) want queries and documents marked differently; by default a query is embedded
    /// like a document.
    async fn embed_query(&self, text: &str) -> Result<Vec<f32>, EmbedError> {
        let vectors = self.embed(&[text.to_owned()]).await?;
        let [vector]: [Vec<f32>; 1] = vectors.try_into().map_err(|vectors: Vec<_>| {
            EmbedError::Unavailable(format!("{} vectors for one query", vectors.len()))
        })?;
        Ok(vector)
    }

    /// Embeds a search query that has another way to be answered (a fallback model): the same
    /// vector as `embed_query`, but a transient failure is returned at once instead of being
    /// retried, so the fallback answers without the user waiting out the retries. By default,
    /// `embed_query`.
    async fn embed_query_once(&self, text: &str) -> Result<Vec<f32>, EmbedError> {
        self.embed_query(text).await
    }

    /// Total time callers have spent held back by client-side pacing and back-off (summed
    /// over concurrent callers), for the metrics: a migration that crawls because of rate
    /// limits should say so. Zero for models that are never throttled.
    fn throttled(&self) -> Duration {
        Duration::ZERO
    }

    /// How far the backfill of this model may go within the migration's `bounds` right now:
    /// a provider adapts it to the latency its live requests see (`domain::throttle`). By
    /// default, the bounds themselves.
    fn backfill_limits(&self, bounds: Bounds) -> BackfillLimits {
        BackfillLimits::at(bounds)
    }

    /// Whether the provider failed transiently (down, overloaded, timing out) in the last few
    /// seconds and has not answered since, so a request that can be served another way (a
    /// query with a fallback, the best-effort half of a dual write) should not wait for its
    /// retries. False for models that cannot be unreachable.
    fn recently_unreachable(&self) -> bool {
        false
    }

    /// Whether the model computes its vectors on this machine's CPU, so that a backfill's
    /// embedding is part of its local cost (`domain::cpu_share`). By default false: a provider
    /// computes them elsewhere.
    fn embeds_on_this_machine(&self) -> bool {
        false
    }

    /// The client-side budget the model is paced at, for `dry_run` estimates; unbounded for
    /// models that only spend CPU.
    fn pace(&self) -> Pace {
        Pace::default()
    }
}

/// The models this process can embed with, and the one a new data directory starts with.
///
/// Built once at start-up and shared by cloning; a clone shares the embedders (they sit
/// behind `Arc`s), so cloning is cheap.
#[derive(Clone)]
pub struct ModelRegistry {
    /// The model a fresh store makes active; the store's own choice wins after that.
    active_model: String,
    /// In registration order, which is the order `GET /v1/models` lists them in.
    entries: Vec<Entry>,
}

/// One registered model.
#[derive(Clone)]
struct Entry {
    info: ModelInfo,
    embedder: Arc<dyn Embedder>,
    /// The longest input the model embeds whole, in estimated tokens (`estimate_tokens`);
    /// `None` when unknown (the builtin models take any length). A longer text is still
    /// embedded, the server truncating it, but is flagged (issue 10). Kept beside `info`
    /// rather than in it, because `GET /v1/models` does not show it.
    max_input_tokens: Option<u32>,
    /// How the model's approximate index is built and searched.
    index: GraphSettings,
    /// What the provider bills per million tokens; `None` for a model without a price (the
    /// built-in models by default), whose migrations report no cost and take no budget.
    price_per_million_tokens: Option<f64>,
}

impl ModelRegistry {
    /// The two offline models: `hash-v1` (256 dimensions, active) and `hash-v2` (384).
    pub fn builtin() -> Self {
        let mut registry = Self::new("hash-v1");
        let v1 = HashEmbedder::hash_v1();
        registry.insert(builtin_info("hash-v1", 256), Arc::new(v1));
        let v2 = HashEmbedder::hash_v2();
        registry.insert(builtin_info("hash-v2", 384), Arc::new(v2));
        registry
    }

    /// An empty registry whose active model is `active_model`, to be filled with `insert`.
    pub fn new(active_model: impl Into<String>) -> Self {
        Self {
            active_model: active_model.into(),
            entries: Vec::new(),
        }
    }

    /// Registers `embedder` as `info.id`, replacing a model of the same id in its place (so
    /// tests can swap in an instrumented model), or appending a new one.
    ///
    /// `info.dimensions` must equal `embedder.dimensions()`: indexes are sized from the
    /// former and vectors are checked against the latter.
    pub fn insert(&mut self, info: ModelInfo, embedder: Arc<dyn Embedder>) {
        self.insert_with_input_limit(info, embedder, None);
    }

    /// Sets how model `id`'s approximate index is built and searched; a model not registered
    /// is passed over.
    pub fn set_index_settings(&mut self, id: &str, settings: GraphSettings) {
        if let Some(at) = self.position(id) {
            self.entries[at].index = settings;
        }
    }

    /// How model `id`'s approximate index is built and searched (the defaults when unset).
    pub fn index_settings(&self, id: &str) -> GraphSettings {
        self.position(id)
            .map_or_else(GraphSettings::default, |at| self.entries[at].index)
    }

    /// `insert` for a model that embeds at most `max_input_tokens` (estimated) of each text
    /// whole; `None` for no limit.
    pub fn insert_with_input_limit(
        &mut self,
        info: ModelInfo,
        embedder: Arc<dyn Embedder>,
        max_input_tokens: Option<u32>,
    ) {
        debug_assert_eq!(
            info.dimensions,
            embedder.dimensions(),
            "model {} advertises other dimensions than its embedder returns",
            info.id
        );
        let entry = Entry {
            info,
            embedder,
            max_input_tokens,
            index: GraphSettings::default(),
            price_per_million_tokens: None,
        };
        match self.position(&entry.info.id) {
            Some(at) => self.entries[at] = entry,
            None => self.entries.push(entry),
        }
    }

    /// Sets what model `id` costs per million tokens (`None`: no price); a model not
    /// registered is passed over.
    pub fn set_price(&mut self, id: &str, price_per_million_tokens: Option<f64>) {
        if let Some(at) = self.position(id) {
            self.entries[at].price_per_million_tokens = price_per_million_tokens;
        }
    }

    /// What model `id` costs per million tokens; `None` without a price or for an unknown id.
    pub fn price(&self, id: &str) -> Option<f64> {
        self.position(id)
            .and_then(|at| self.entries[at].price_per_million_tokens)
    }

    /// The embedder registered as `id`.
    pub fn get(&self, id: &str) -> Option<&Arc<dyn Embedder>> {
        self.position(id).map(|at| &self.entries[at].embedder)
    }

    /// The input limit of the model `id` in estimated tokens; `None` for a model without one
    /// or an unknown id.
    pub fn max_input_tokens(&self, id: &str) -> Option<u32> {
        self.position(id)
            .and_then(|at| self.entries[at].max_input_tokens)
    }

    /// Whether model `id` embeds `text` truncated: its estimated tokens (characters / 4,
    /// rounded up, the rule pacing budgets with) exceed the model's `max_input_tokens`.
    /// False for a model without a limit or an unknown id.
    pub fn is_over_input_limit(&self, id: &str, text: &str) -> bool {
        self.max_input_tokens(id)
            .is_some_and(|limit| estimate_tokens(text.chars().count() as u64) > u64::from(limit))
    }

    /// Time callers of model `id` have spent throttled (`Embedder::throttled`); zero for an
    /// unknown id.
    pub fn throttled(&self, id: &str) -> Duration {
        self.get(id)
            .map_or(Duration::ZERO, |embedder| embedder.throttled())
    }

    /// The description of the model registered as `id`.
    pub fn info(&self, id: &str) -> Option<&ModelInfo> {
        self.position(id).map(|at| &self.entries[at].info)
    }

    /// A copy of every registered model's description, in registration order. Owned, so a
    /// caller can keep or consume it; the list is short and read at start-up and by
    /// `GET /v1/models` only.
    pub fn models(&self) -> Vec<ModelInfo> {
        self.entries
            .iter()
            .map(|entry| entry.info.clone())
            .collect()
    }

    /// The model a fresh store makes active.
    pub fn active_model(&self) -> &str {
        &self.active_model
    }

    /// Changes the model a fresh store makes active. Not checked against the registered
    /// models, so it may be called before or after the `insert`s.
    pub fn set_active_model(&mut self, id: impl Into<String>) {
        self.active_model = id.into();
    }

    // A linear scan: a registry holds a handful of models.
    fn position(&self, id: &str) -> Option<usize> {
        self.entries.iter().position(|entry| entry.info.id == id)
    }
}

fn builtin_info(id: &str, dimensions: usize) -> ModelInfo {
    ModelInfo {
        id: id.into(),
        provider: "builtin".into(),
        dimensions,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Answers with one fixed unit vector per text, so a test can tell it from a hash model.
    struct Constant(usize);

    #[async_trait::async_trait]
    impl Embedder for Constant {
        fn dimensions(&self) -> usize {
            self.0
        }

        async fn embed(&self, texts: &[String]) -> Result<Vec<Vec<f32>>, EmbedError> {
            let mut unit = vec![0.0; self.0];
            unit[0] = 1.0;
            Ok(vec![unit; texts.len()])
        }
    }

    fn info(id: &str, dimensions: usize) -> ModelInfo {
        ModelInfo {
            id: id.into(),
            provider: "test".into(),
            dimensions,
        }
    }

    fn ids(registry: &ModelRegistry) -> Vec<String> {
        registry.models().into_iter().map(|m| m.id).collect()
    }

    #[test]
    fn builtin_lists_both_hash_models_with_hash_v1_active() {
        let registry = ModelRegistry::builtin();
        assert_eq!(registry.active_model(), "hash-v1");
        let expected = [builtin_info("hash-v1", 256), builtin_info("hash-v2", 384)];
        assert_eq!(registry.models(), expected);
    }

    #[test]
    fn builtin_embedders_match_their_advertised_dimensions() {
        let registry = ModelRegistry::builtin();
        for model in registry.models() {
            let embedder = registry.get(&model.id).expect("registered");
            assert_eq!(embedder.dimensions(), model.dimensions, "{}", model.id);
        }
    }

    #[test]
    fn new_registry_is_empty_with_the_given_active_model() {
        let registry = ModelRegistry::new("remote");
        assert_eq!(registry.active_model(), "remote");
        assert!(registry.models().is_empty());
        assert!(registry.get("remote").is_none());
        assert!(registry.info("remote").is_none());
    }

    #[test]
    fn insert_appends_new_ids_in_order() {
        let mut registry = ModelRegistry::new("b");
        registry.insert(info("b", 2), Arc::new(Constant(2)));
        registry.insert(info("a", 3), Arc::new(Constant(3)));
        assert_eq!(ids(&registry), ["b", "a"]);
        assert_eq!(registry.info("a"), Some(&info("a", 3)));
        assert_eq!(registry.get("a").map(|e| e.dimensions()), Some(3));
    }

    #[tokio::test]
    async fn insert_replaces_a_known_id_in_place() {
        let mut registry = ModelRegistry::builtin();
        let replacement = ModelInfo {
            provider: "test".into(),
            ..builtin_info("hash-v1", 256)
        };
        registry.insert(replacement.clone(), Arc::new(Constant(256)));

        assert_eq!(ids(&registry), ["hash-v1", "hash-v2"]);
        assert_eq!(registry.info("hash-v1"), Some(&replacement));
        let vectors = registry
            .get("hash-v1")
            .unwrap()
            .embed(&["anything".into()])
            .await
            .unwrap();
        assert_eq!(vectors[0][0], 1.0, "the replacement embedder answers");
    }

    #[test]
    fn a_text_is_over_the_input_limit_past_its_estimated_tokens() {
        let mut registry = ModelRegistry::builtin();
        registry.insert_with_input_limit(info("short", 2), Arc::new(Constant(2)), Some(8));
        // 8 tokens are 32 characters; characters, not bytes, are counted.
        assert!(!registry.is_over_input_limit("short", &"a".repeat(32)));
        assert!(registry.is_over_input_limit("short", &"a".repeat(33)));
        assert!(!registry.is_over_input_limit("short", &"é".repeat(32)));
        assert_eq!(registry.max_input_tokens("short"), Some(8));
        for unlimited in ["hash-v1", "unknown"] {
            assert!(!registry.is_over_input_limit(unlimited, &"a".repeat(10_000)));
            assert_eq!(registry.max_input_tokens(unlimited), None);
        }
    }

    #[test]
    fn insert_replaces_the_input_limit_too() {
        let mut registry = ModelRegistry::new("m");
        registry.insert_with_input_limit(info("m", 2), Arc::new(Constant(2)), Some(8));
        registry.insert(info("m", 2), Arc::new(Constant(2)));
        assert_eq!(registry.max_input_tokens("m"), None);
    }

    #[test]
    fn set_active_model_changes_only_the_active_model() {
        let mut registry = ModelRegistry::builtin();
        registry.set_active_model("hash-v2");
        assert_eq!(registry.active_model(), "hash-v2");
        assert_eq!(ids(&registry), ["hash-v1", "hash-v2"]);
    }

    #[test]
    fn clones_share_embedders() {
        let registry = ModelRegistry::builtin();
        let clone = registry.clone();
        assert!(Arc::ptr_eq(
            registry.get("hash-v2").unwrap(),
            clone.get("hash-v2").unwrap()
        ));
    }
}
