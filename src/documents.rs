//! The document write and query paths shared by the API and the backfill workers.
//!
//! A departure from DESIGN.md's layout, deliberately: writes, deletes and backfill commits all
//! change two things — the store and the in-memory indexes — and those must change in the same
//! order, or a late index update could resurrect a deleted document or undo a newer version.
//! `commit_order` serialises "commit, then apply to the index" for every writer. It costs
//! nothing on SQLite, whose single writer connection serialises commits anyway, and it lets
//! client writes go ahead of backfill commits (`CommitOrder`); a backfill batch commits in
//! bounded parts, smaller while client writes wait, so a write never waits behind a long one.
//! Each "commit, then apply" section runs to its end even if its caller is dropped (a client
//! that hangs up): see `run_to_end`.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use chrono::Utc;
use serde_json::Value;

use crate::commit_order::{CommitOrder, Turn};
use crate::coordinator::Coordinator;
use crate::domain::{BackfillLimits, Bounds, QueryReason, Route, Routing, RoutingKey};
use crate::embed::{EmbedError, Embedded, Embedder, Lane, ModelRegistry};
use crate::index::filter::Filter;
use crate::index::{Found, IndexSet};
use crate::run_to_end::run_to_end;
use crate::shadow::{ShadowQueue, ShadowRequest};
use crate::store::{
    AfterCommit, BatchItem, BatchReceipt, Claim, DocumentWrite, Kept, Store, StoreError,
    StoredDocument, WriteOutcome, WriteReceipt,
};

/// How many times a write is re-routed when it raced a migration completing.
const MAX_WRITE_ATTEMPTS: usize = 3;

/// The documents a backfill transaction commits when client writes wait for their turn: the
/// write waits a few milliseconds at most, and under a steady stream of writes the backfill
/// still commits this many per turn (`CommitOrder`) instead of one.
const MIN_BACKFILL_PART: usize = 100;

/// The most documents one backfill transaction commits: a write that starts waiting during it
/// waits for this many at most, and a large batch still pays for one sync per this many.
const MAX_BACKFILL_PART: usize = 500;

/// A document as a client sent it.
#[derive(Debug, Clone)]
pub struct NewDocument {
    pub id: String,
    pub text: String,
    pub metadata: Value,
}

/// What a write did: the versions, the models it was embedded with, and the routing it followed.
#[derive(Debug, Clone)]
pub struct Upserted {
    pub outcomes: Vec<WriteOutcome>,
    /// The write models whose vector every document holds for its new version: embedded now,
    /// or kept (`store::Kept`). A best-effort target that failed is left out.
    pub embedded_with: Vec<String>,
    pub routing: Arc<Routing>,
}

/// A query's answer: which side answered and why, and the hits.
#[derive(Debug, Clone)]
pub struct Answer {
    /// The routing the query followed.
    pub routing: Arc<Routing>,
    /// The model whose index answered: the routed one, or its fallback.
    pub model: String,
    pub route: Route,
    pub reason: QueryReason,
    pub hits: Vec<QueryHit>,
    /// Whether every candidate vector was scored, rather than an approximate index consulted.
    pub exact: bool,
}

/// One query hit with its text.
#[derive(Debug, Clone, PartialEq)]
pub struct QueryHit {
    pub id: String,
    pub score: f32,
    pub text: String,
    pub metadata: Value,
}

/// Why a write or query could not be served.
#[derive(Debug, thiserror::Error)]
pub enum ServiceError {
    #[error("embedding with {model} failed: {source}")]
    Embed { model: String, source: EmbedError },
    /// The provider answered with vectors that do not match the registry: never stored.
    #[error("{model} returned {got} where the registry promises {expected}")]
    WrongShape {
        model: String,
        expected: String,
        got: String,
    },
    #[error(transparent)]
    Store(#[from] StoreError),
}

/// The write and query paths; one per process, shared behind an `Arc`.
pub struct Documents {
    coordinator: Arc<Coordinator>,
    store: Arc<dyn Store>,
    models: ModelRegistry,
    /// The in-memory indexes, when this process keeps them (SQLite); `None` when the store
    /// searches its own (`Store::vector_search`, PostgreSQL).
    indexes: Option<Arc<IndexSet>>,
    /// Held from a store commit until its effect is applied to `indexes` (see module doc).
    commit_order: CommitOrder,
    /// Where a shadowed query leaves its request for the shadow worker, never waiting.
    shadow: ShadowQueue,
}

impl Documents {
    /// Wires the write path to its collaborators; `indexes` are the in-memory indexes, `None`
    /// when the store searches its own; `shadow` takes the shadowed queries (`shadow`).
    pub fn new(
        coordinator: Arc<Coordinator>,
        store: Arc<dyn Store>,
        models: ModelRegistry,
        indexes: Option<Arc<IndexSet>>,
        shadow: ShadowQueue,
    ) -> Self {
        Self {
            coordinator,
            store,
            models,
            indexes,
            commit_order: CommitOrder::default(),
            shadow,
        }
    }

    /// Embeds `docs` with every current write model and commits them. Re-routes when the
    /// write raced a migration completing.
    ///
    /// A document whose text is unchanged keeps its stored vectors that are current, and no
    /// model embeds it again (`store::Kept`): only its version moves, and the kept vectors
    /// follow. When another write changed the document in between, the commit conflicts and
    /// the write reads again; its last attempt keeps nothing and embeds everything, so a
    /// heavily contended id cannot starve on keeps.
    ///
    /// A write model whose embedder fails refuses the write (nothing changes), except the target
    /// of a dual write while migrating: then the documents are written on the source alone and
    /// the store queues them, so the backfill embeds them later (API.md: "a failed dual write").
    pub async fn upsert(self: &Arc<Self>, docs: &[NewDocument]) -> Result<Upserted, ServiceError> {
        let mut attempt = 1;
        loop {
            let routing = self.coordinator.routing(Utc::now());
            let keep = attempt < MAX_WRITE_ATTEMPTS;
            let (writes, embedded_with) = self.embed_for_write(docs, &routing, keep).await?;
            match self.commit_writes(writes).await {
                Ok(outcomes) => {
                    count_route("write", routing.write_route);
                    return Ok(Upserted {
                        outcomes,
                        embedded_with,
                        routing,
                    });
                }
                Err(StoreError::Conflict(reason)) if attempt < MAX_WRITE_ATTEMPTS => {
                    tracing::debug!(%reason, attempt, "write raced a concurrent change; retrying");
                    attempt += 1;
                }
                // Not the client's transition: the migration kept changing under the write.
                Err(StoreError::Conflict(reason)) => {
                    return Err(StoreError::Unavailable(format!(
                        "the write raced {MAX_WRITE_ATTEMPTS} migration changes and was not \
                         written: {reason}"
                    ))
                    .into());
                }
                Err(error) => return Err(error.into()),
            }
        }
    }

    /// The writes of `docs` for `routing`, each embedded with every write model that it does
    /// not keep a vector of (with `keep`, see `kept_vectors`), and the write models whose
    /// vector every document holds for its new version once committed (`embedded_with`).
    async fn embed_for_write(
        &self,
        docs: &[NewDocument],
        routing: &Routing,
        keep: bool,
    ) -> Result<(Vec<DocumentWrite>, Vec<String>), ServiceError> {
        let kept = if keep {
            self.kept_vectors(docs).await?
        } else {
            vec![None; docs.len()]
        };
        let mut writes: Vec<DocumentWrite> = docs
            .iter()
            .zip(kept)
            .map(|(d, kept)| DocumentWrite {
                id: d.id.clone(),
                text: d.text.clone(),
                metadata: d.metadata.clone(),
                vectors: Vec::with_capacity(routing.write_models.len()),
                kept,
            })
            .collect();
        let mut embedded_with = Vec::with_capacity(routing.write_models.len());
        for model in &routing.write_models {
            if self.embed_missing(model, routing, &mut writes).await? {
                embedded_with.push(model.clone());
            }
        }
        Ok((writes, embedded_with))
    }

    /// What each of `docs` may keep of its stored vectors (`Kept::read_all`).
    async fn kept_vectors(&self, docs: &[NewDocument]) -> Result<Vec<Option<Kept>>, ServiceError> {
        let ids: Vec<String> = docs.iter().map(|d| d.id.clone()).collect();
        let stored = self.store.stored_documents(&ids).await?;
        let texts = docs.iter().map(|d| (d.id.as_str(), d.text.as_str()));
        Ok(Kept::read_all(&stored, texts))
    }

    /// Embeds with `model` the writes that neither keep nor carry a vector of it, in one call
    /// (none when every write keeps one), and adds the vectors to them. Whether every write
    /// now carries a `model` vector: `false` when a best-effort model (the target of a dual
    /// write) failed or is known to be unreachable, and the store queues the documents.
    async fn embed_missing(
        &self,
        model: &str,
        routing: &Routing,
        writes: &mut [DocumentWrite],
    ) -> Result<bool, ServiceError> {
        let missing: Vec<usize> = (0..writes.len())
            .filter(|&i| !writes[i].carries(model))
            .collect();
        if missing.is_empty() {
            return Ok(true);
        }
        let best_effort = routing.is_best_effort_write(model);
        if best_effort && self.recently_unreachable(model) {
            tracing::debug!(%model, "dual write target unreachable; queued for the backfill");
            return Ok(false);
        }
        let texts: Vec<String> = missing.iter().map(|&i| writes[i].text.clone()).collect();
        let vectors = match self.embed(model, &texts, Lane::Interactive).await {
            Ok(vectors) => vectors,
            Err(error) if best_effort => {
                tracing::warn!(%error, "dual write to the target failed; queued for the backfill");
                return Ok(false);
            }
            Err(error) => return Err(error),
        };
        for (i, vector) in missing.into_iter().zip(vectors) {
            writes[i].vectors.push((model.to_owned(), vector));
        }
        Ok(true)
    }

    /// Embeds `texts` with `model`, checking the provider kept its promised dimensions, and
    /// counts the texts the model embedded truncated (`is_over_input_limit`).
    pub async fn embed(
        &self,
        model: &str,
        texts: &[String],
        lane: Lane,
    ) -> Result<Vec<Vec<f32>>, ServiceError> {
        Ok(self.embed_counted(model, texts, lane).await?.vectors)
    }

    /// `embed`, with the tokens the provider reported billing for a backfill
    /// (`Embedder::embed_backfill`); none for the interactive lane.
    pub async fn embed_counted(
        &self,
        model: &str,
        texts: &[String],
        lane: Lane,
    ) -> Result<Embedded, ServiceError> {
        let embedder = self.embedder(model)?;
        let started = Instant::now();
        let result = match lane {
            Lane::Interactive => embedder.embed(texts).await.map(Embedded::unreported),
            Lane::Backfill => embedder.embed_backfill(texts).await,
        };
        let embedded = observed(model, started, result)?;
        check_shape(model, embedder.dimensions(), texts.len(), &embedded.vectors)?;
        self.count_truncated(model, texts);
        Ok(embedded)
    }

    /// What model `id` costs per million tokens; `None` without a price.
    pub fn price(&self, model: &str) -> Option<f64> {
        self.models.price(model)
    }

    /// Whether `model` embeds `text` truncated: its estimated tokens exceed the model's
    /// `max_input_tokens` (`ModelRegistry::is_over_input_limit`).
    pub fn is_over_input_limit(&self, model: &str, text: &str) -> bool {
        self.models.is_over_input_limit(model, text)
    }

    /// Counts the texts of one embedded batch that `model` truncated; one log line per batch.
    fn count_truncated(&self, model: &str, texts: &[String]) {
        if self.models.max_input_tokens(model).is_none() {
            return;
        }
        let truncated = texts
            .iter()
            .filter(|text| self.is_over_input_limit(model, text))
            .count();
        if truncated > 0 {
            metrics::counter!("reembed_embed_truncated_inputs_total", "model" => model.to_owned())
                .increment(truncated as u64);
            let inputs = texts.len();
            tracing::debug!(%model, truncated, inputs, "inputs over max_input_tokens embedded truncated");
        }
    }

    /// Embeds a search query with `model`, which may mark queries apart from documents
    /// (`Embedder::embed_query`), checking the promised dimensions as `embed` does.
    async fn embed_query(&self, model: &str, text: &str) -> Result<Vec<f32>, ServiceError> {
        self.embed_query_with(model, text, false).await
    }

    /// `embed_query` without retrying a transient failure (`Embedder::embed_query_once`), for
    /// a query that has a fallback.
    async fn embed_query_once(&self, model: &str, text: &str) -> Result<Vec<f32>, ServiceError> {
        self.embed_query_with(model, text, true).await
    }

    async fn embed_query_with(
        &self,
        model: &str,
        text: &str,
        once: bool,
    ) -> Result<Vec<f32>, ServiceError> {
        let embedder = self.embedder(model)?;
        let started = Instant::now();
        let result = if once {
            embedder.embed_query_once(text).await
        } else {
            embedder.embed_query(text).await
        };
        let vector = observed(model, started, result)?;
        check_shape(
            model,
            embedder.dimensions(),
            1,
            std::slice::from_ref(&vector),
        )?;
        Ok(vector)
    }

    /// How far `model`'s backfill may go within `bounds` right now (`Embedder::backfill_limits`);
    /// the bounds themselves for a model that is not configured.
    pub fn backfill_limits(&self, model: &str, bounds: Bounds) -> BackfillLimits {
        self.models
            .get(model)
            .map_or(BackfillLimits::at(bounds), |embedder| {
                embedder.backfill_limits(bounds)
            })
    }

    /// Whether `model` computes its vectors on this machine (the built-in models).
    pub fn embeds_on_this_machine(&self, model: &str) -> bool {
        self.models
            .get(model)
            .is_some_and(|embedder| embedder.embeds_on_this_machine())
    }

    fn embedder(&self, model: &str) -> Result<&Arc<dyn Embedder>, ServiceError> {
        self.models.get(model).ok_or_else(|| ServiceError::Embed {
            model: model.to_owned(),
            source: EmbedError::Unavailable(format!("model {model} is not configured")),
        })
    }

    /// Waits for the turn to commit, then commits `writes` and applies them to the indexes
    /// and counts, to the end even if the caller is dropped meanwhile (`run_to_end`). A caller
    /// dropped while it waits for the turn changes nothing.
    async fn commit_writes(
        self: &Arc<Self>,
        writes: Vec<DocumentWrite>,
    ) -> Result<Vec<WriteOutcome>, StoreError> {
        let turn = self.commit_order.for_write().await;
        let this = Arc::clone(self);
        run_to_end(async move { this.commit_writes_now(turn, writes).await }).await
    }

    async fn commit_writes_now(
        &self,
        _turn: Turn,
        writes: Vec<DocumentWrite>,
    ) -> Result<Vec<WriteOutcome>, StoreError> {
        let over_input_limit = |model: &str, text: &str| self.is_over_input_limit(model, text);
        let receipt = self
            .store
            .write_documents_with(&writes, &over_input_limit)
            .await?;
        if let Some(indexes) = &self.indexes {
            for (write, outcome) in writes.iter().zip(&receipt.outcomes) {
                indexes.upsert_metadata(&write.id, outcome.version, &write.metadata);
                for (model, vector) in &write.vectors {
                    indexes.upsert(model, &write.id, outcome.version, vector);
                }
                if let Some(kept) = &write.kept {
                    restamp_kept(indexes, &write.id, kept, outcome.version);
                }
            }
        }
        self.follow_counts(&receipt);
        Ok(receipt.outcomes)
    }

    /// Deletes a document everywhere; `false` when it did not exist. Once its turn to commit
    /// has come, the delete is carried to the end even if the caller is dropped
    /// (`run_to_end`).
    pub async fn delete(self: &Arc<Self>, id: &str) -> Result<bool, ServiceError> {
        let turn = self.commit_order.for_write().await;
        let (this, id) = (Arc::clone(self), id.to_owned());
        Ok(run_to_end(async move { this.delete_now(turn, &id).await }).await?)
    }

    async fn delete_now(&self, _turn: Turn, id: &str) -> Result<bool, StoreError> {
        let Some(receipt) = self.store.delete_document(id).await? else {
            return Ok(false);
        };
        if let Some(indexes) = &self.indexes {
            indexes.remove(id);
        }
        self.follow_counts(&receipt);
        Ok(true)
    }

    /// Commits the backfill work of `claim` and applies the vectors that passed
    /// compare-and-set, then releases the claim.
    ///
    /// A batch commits in transactions of at most `MAX_BACKFILL_PART` documents, and of
    /// `MIN_BACKFILL_PART` while client writes wait for their turn, so a write never waits
    /// long behind a large batch. Each part is a complete compare-and-set commit under the
    /// claim's lease, applied to the indexes and counts before the next, so an error after
    /// some parts leaves those done and the rest queued (claimable again once the lease
    /// expires): nothing is skipped or counted twice. Once begun, the batch is carried to the
    /// end even if the caller is dropped (`run_to_end`).
    ///
    /// `tokens`, what embedding the batch was billed, count with the first part.
    pub async fn commit_batch(
        self: &Arc<Self>,
        claim: Claim,
        items: Vec<BatchItem>,
        tokens: u64,
    ) -> Result<BatchReceipt, StoreError> {
        let this = Arc::clone(self);
        run_to_end(async move { this.commit_batch_now(&claim, items, tokens).await }).await
    }

    /// Releases a claim whose attempt failed: its documents stay queued, count as failed (once
    /// each) and wait `retry_after` before a claim takes them again; follows the count. To the
    /// end once begun, like every commit.
    pub async fn release_failed(
        self: &Arc<Self>,
        claim: Claim,
        retry_after: Duration,
    ) -> Result<(), StoreError> {
        let this = Arc::clone(self);
        run_to_end(async move {
            let _turn = this.commit_order.for_backfill().await;
            let delta = this.store.release_failed(&claim, retry_after).await?;
            this.coordinator
                .apply_delta(&claim.migration_id, delta, Utc::now());
            Ok(())
        })
        .await
    }

    async fn commit_batch_now(
        &self,
        claim: &Claim,
        items: Vec<BatchItem>,
        mut tokens: u64,
    ) -> Result<BatchReceipt, StoreError> {
        let mut receipt = BatchReceipt::default();
        let mut rest = items.as_slice();
        loop {
            let turn = self.commit_order.for_backfill().await;
            let part_size = if self.commit_order.writes_waiting() {
                MIN_BACKFILL_PART
            } else {
                MAX_BACKFILL_PART
            };
            let (part, after) = rest.split_at(part_size.min(rest.len()));
            let last = if after.is_empty() {
                AfterCommit::Release
            } else {
                AfterCommit::KeepLease
            };
            let done = self.commit_part(turn, claim, part, tokens, last).await?;
            tokens = 0;
            receipt.written.extend(done.written);
            receipt.delta = receipt.delta.then(done.delta);
            rest = after;
            if rest.is_empty() {
                return Ok(receipt);
            }
        }
    }

    /// Commits `items` of `claim` in one transaction during `_turn`, and applies what it wrote
    /// to the indexes and counts.
    async fn commit_part(
        &self,
        _turn: Turn,
        claim: &Claim,
        items: &[BatchItem],
        tokens: u64,
        after: AfterCommit,
    ) -> Result<BatchReceipt, StoreError> {
        let receipt = self
            .store
            .commit_claimed(claim, items, tokens, after)
            .await?;
        if let Some(indexes) = &self.indexes {
            let vectors: HashMap<&str, &[f32]> = items
                .iter()
                .filter_map(|item| match item {
                    BatchItem::Embedded { id, vector, .. } => {
                        Some((id.as_str(), vector.as_slice()))
                    }
                    BatchItem::Skipped { .. } => None,
                })
                .collect();
            for (id, version) in &receipt.written {
                if let Some(vector) = vectors.get(id.as_str()) {
                    indexes.upsert(&claim.target_model, id, *version, vector);
                }
            }
        }
        self.coordinator
            .apply_delta(&claim.migration_id, receipt.delta, Utc::now());
        Ok(receipt)
    }

    fn follow_counts(&self, receipt: &WriteReceipt) {
        if let Some((migration_id, delta)) = &receipt.migration {
            self.coordinator
                .apply_delta(migration_id, *delta, Utc::now());
        }
    }

    /// Answers a query through the routing policy: embeds `text` with the model the routing
    /// plans for a query with `routing_key` (the current query model, or the target for a
    /// canary) and returns the `top_k` documents nearest to it in that model's index only,
    /// among those `filter` matches. When that model's provider is unreachable (it just failed,
    /// or fails now) and the plan names a fallback, the fallback model embeds and answers
    /// instead (`reason: fallback`): vectors of the two models still never meet. Once
    /// answered, an unfiltered query in the migration's shadow share is offered to the shadow
    /// worker without waiting (`shadow`).
    pub async fn query(
        &self,
        text: &str,
        top_k: usize,
        filter: &Filter,
        exact: bool,
        routing_key: Option<&RoutingKey>,
    ) -> Result<Answer, ServiceError> {
        let started = Instant::now();
        let routing = self.coordinator.routing(Utc::now());
        let plan = routing.query_plan(routing_key);
        let (model, route, reason, query) = match &plan.fallback {
            Some(fallback) if self.recently_unreachable(&plan.model) => {
                self.fall_back(&plan.model, fallback, text).await?
            }
            Some(fallback) => match self.embed_query_once(&plan.model, text).await {
                Err(error) if is_transient(&error) => {
                    self.fall_back(&plan.model, fallback, text).await?
                }
                result => (plan.model, plan.route, plan.reason, result?),
            },
            None => {
                let query = self.embed_query(&plan.model, text).await?;
                (plan.model, plan.route, plan.reason, query)
            }
        };
        count_route("query", route);
        let (hits, exact) = self.search(&model, &query, top_k, filter, exact).await?;
        let shadow = routing
            .shadow
            .as_ref()
            .filter(|_| filter.is_empty() && reason != QueryReason::Fallback)
            .and_then(|share| share.plan(&model, rand::random()));
        if let Some(plan) = shadow {
            self.shadow.offer(ShadowRequest {
                plan,
                text: text.to_owned(),
                top_k,
                exact,
                answered_model: model.clone(),
                answered_vector: query,
                answered_latency: started.elapsed(),
            });
        }
        Ok(Answer {
            routing,
            model,
            route,
            reason,
            hits,
            exact,
        })
    }

    /// Embeds `text` as a query with `model` and searches its index as an unfiltered live
    /// query would, asking the provider once (no retries): the other side of a shadow read,
    /// which its caller times. Returns the query's vector, to rank it again among the
    /// documents both models have (`rank_vector_in_both`).
    pub async fn search_as_query(
        &self,
        model: &str,
        text: &str,
        top_k: usize,
        exact: bool,
    ) -> Result<Vec<f32>, ServiceError> {
        let query = self.embed_query_once(model, text).await?;
        self.search(model, &query, top_k, &Filter::default(), exact)
            .await?;
        Ok(query)
    }

    /// The ids of the `top_k` documents nearest to `text`, embedded as a query with `model`,
    /// among those that have vectors of both `model` and `other`, every candidate scored: the
    /// ranking a labelled evaluation judges (`evaluation`).
    pub async fn rank_in_both(
        &self,
        model: &str,
        other: &str,
        text: &str,
        top_k: usize,
    ) -> Result<Vec<String>, ServiceError> {
        let query = self.embed_query(model, text).await?;
        self.rank_vector_in_both(model, other, &query, top_k).await
    }

    /// `rank_in_both` of a query already embedded with `model`: a shadow read ranks the
    /// vectors its two sides embedded (`shadow`).
    pub async fn rank_vector_in_both(
        &self,
        model: &str,
        other: &str,
        query: &[f32],
        top_k: usize,
    ) -> Result<Vec<String>, ServiceError> {
        let hits = match (&self.indexes, self.store.vector_search()) {
            (Some(indexes), _) => indexes.search_in_both(model, other, query, top_k),
            (None, Some(search)) => search.nearest_in_both(model, other, query, top_k).await?,
            (None, None) => return Err(no_vector_index().into()),
        };
        Ok(hits.into_iter().map(|hit| hit.id).collect())
    }

    /// Embeds `text` with the fallback model, counting the fallback from `failed`.
    async fn fall_back(
        &self,
        failed: &str,
        (model, route): &(String, Route),
        text: &str,
    ) -> Result<(String, Route, QueryReason, Vec<f32>), ServiceError> {
        metrics::counter!("reembed_query_fallbacks_total", "model" => failed.to_owned(), "fallback" => model.clone())
            .increment(1);
        let query = self.embed_query(model, text).await?;
        Ok((model.clone(), *route, QueryReason::Fallback, query))
    }

    /// Whether `model`'s provider failed so recently that a request with another way to be
    /// served should not wait for it (`Embedder::recently_unreachable`).
    fn recently_unreachable(&self, model: &str) -> bool {
        self.models
            .get(model)
            .is_some_and(|embedder| embedder.recently_unreachable())
    }

    /// The `top_k` nearest documents to `query` in `model`'s index among those `filter`
    /// matches, with their texts and metadata, and whether they were found exactly (always
    /// when `exact`). The metadata is checked against the filter
    /// once more as read from the store, so a hit never contradicts the filter even while a
    /// concurrent write's postings are being published.
    async fn search(
        &self,
        model: &str,
        query: &[f32],
        top_k: usize,
        filter: &Filter,
        exact: bool,
    ) -> Result<(Vec<QueryHit>, bool), ServiceError> {
        let found = self.nearest(model, query, top_k, filter, exact).await?;
        let ids: Vec<String> = found.hits.iter().map(|h| h.id.clone()).collect();
        let mut documents: HashMap<String, StoredDocument> = self
            .store
            .hit_documents(&ids)
            .await?
            .into_iter()
            .map(|document| (document.id.clone(), document))
            .collect();
        let hits = found
            .hits
            .into_iter()
            .filter_map(|hit| {
                let document = documents.remove(&hit.id)?;
                filter.matches(&document.metadata).then_some(QueryHit {
                    id: hit.id,
                    score: hit.score,
                    text: document.text,
                    metadata: document.metadata,
                })
            })
            .collect();
        Ok((hits, found.exact))
    }

    /// The nearest documents in `model`'s index, wherever it is kept: in this process's
    /// memory, or in the store's database.
    async fn nearest(
        &self,
        model: &str,
        query: &[f32],
        top_k: usize,
        filter: &Filter,
        exact: bool,
    ) -> Result<Found, StoreError> {
        if let Some(indexes) = &self.indexes {
            return Ok(indexes.search(model, query, top_k, filter, exact));
        }
        let Some(search) = self.store.vector_search() else {
            return Err(no_vector_index());
        };
        let nearest = search.nearest(model, query, top_k, filter, exact).await?;
        Ok(Found {
            hits: nearest.hits,
            exact: nearest.exact,
        })
    }
}

/// The error of a process that has no vector index to search: neither the store nor memory.
fn no_vector_index() -> StoreError {
    StoreError::Unavailable(
        "no vector index: the store searches none and none is kept in memory".to_owned(),
    )
}

/// Moves the vectors `kept` in the in-memory indexes to `version`, as the store did. The
/// commit order guarantees the indexes hold what the store held before this commit, so a row
/// not at `kept.version` is one the index never took (a logged refusal), not a stale one.
fn restamp_kept(indexes: &IndexSet, id: &str, kept: &Kept, version: u64) {
    for model in &kept.models {
        if !indexes.restamp(model, id, kept.version, version) {
            tracing::warn!(%model, %id, from = kept.version, to = version, "kept vector not in the index");
        }
    }
}

/// Whether `error` is a provider failing for the moment (down, overloaded, timing out), for
/// which another model's index may answer instead.
fn is_transient(error: &ServiceError) -> bool {
    matches!(
        error,
        ServiceError::Embed {
            source: EmbedError::Unavailable(_),
            ..
        }
    )
}

/// Refuses a provider answer with the wrong number of vectors or a wrong dimension.
fn check_shape(
    model: &str,
    dims: usize,
    count: usize,
    vectors: &[Vec<f32>],
) -> Result<(), ServiceError> {
    let wrong = |expected: String, got: String| ServiceError::WrongShape {
        model: model.to_owned(),
        expected,
        got,
    };
    if vectors.len() != count {
        return Err(wrong(
            format!("{count} vectors"),
            format!("{} vectors", vectors.len()),
        ));
    }
    match vectors.iter().find(|v| v.len() != dims) {
        Some(v) => Err(wrong(
            format!("{dims} dimensions"),
            format!("{} dimensions", v.len()),
        )),
        None => Ok(()),
    }
}

/// Records an embedder call in the metrics (count, errors by kind, latency) and names the
/// model in its error.
fn observed<T>(
    model: &str,
    started: Instant,
    result: Result<T, EmbedError>,
) -> Result<T, ServiceError> {
    let outcome = match &result {
        Ok(_) => "ok",
        Err(EmbedError::Unavailable(_)) => "unavailable",
        Err(EmbedError::Rejected(_)) => "rejected",
        Err(EmbedError::Misconfigured(_)) => "misconfigured",
    };
    let model_label = model.to_owned();
    metrics::counter!("reembed_embed_requests_total", "model" => model_label.clone(), "outcome" => outcome)
        .increment(1);
    metrics::histogram!("reembed_embed_duration_seconds", "model" => model_label)
        .record(started.elapsed().as_secs_f64());
    result.map_err(|source| ServiceError::Embed {
        model: model.to_owned(),
        source,
    })
}

/// Counts one routing decision a write or query followed.
fn count_route(operation: &'static str, route: Route) {
    let route = match route {
        Route::Legacy => "legacy",
        Route::Target => "target",
        Route::DualWrite => "dual_write",
    };
    metrics::counter!("reembed_routing_decisions_total", "operation" => operation, "route" => route)
        .increment(1);
}
