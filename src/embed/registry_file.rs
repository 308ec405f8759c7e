//! The model registry file (`--config reembed.toml`), read once at start-up.
//!
//! ```toml
//! active_model = "hash-v1"
//!
//! [[models]]
//! id = "hash-v1"
//! provider = "builtin"
//! dimensions = 256
//!
//! [[models]]
//! id = "openai-small"
//! provider = "openai"
//! dimensions = 1536
//! base_url = "https://api.openai.com/v1"
//! model = "text-embedding-3-small"
//! api_key_env = "OPENAI_API_KEY"
//! ```
//! Any model may name a `price_per_million_tokens` (a number ≥ 0, in whatever currency the
//! operator budgets in): migrations to it then report their cost and may take a `max_cost`
//! (`domain::cost`). Without one a model is free, as the built-in models are by default.
//!
//! `reembed.example.toml` lists every field. Unknown fields are errors, so a typo cannot
//! silently drop a limit.
//!
//! Keys never sit in the file: `api_key_env` names the environment variable holding one, and a
//! variable that is unset (or empty) stops start-up with its name — except for a loopback
//! `base_url`, where local servers usually need no key and an unset variable means "send none".
//! A model without `api_key_env` sends no key (keyless servers on a private network).
//!
//! Two environment variables override the file, so one file can serve several deployments:
//! `REEMBED_ACTIVE_MODEL` replaces `active_model` (which, like the file's, only decides the
//! model of a fresh store), and `REEMBED_MODEL_<ID>_BASE_URL` replaces a provider model's
//! `base_url`, `<ID>` being its id uppercased with every other character than A-Z and 0-9
//! turned into `_` (`openai-small` → `REEMBED_MODEL_OPENAI_SMALL_BASE_URL`). Empty values are
//! ignored.

use std::net::IpAddr;
use std::num::{NonZeroU32, NonZeroU64, NonZeroUsize};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use reqwest::Url;
use serde::Deserialize;

use super::builtin::HashEmbedder;
use super::openai::{DEFAULT_MAX_BATCH, DEFAULT_TIMEOUT, OpenAiEmbedder, OpenAiSettings};
use super::{Embedder, ModelInfo, ModelRegistry};
use crate::domain::throttle::DEFAULT_LATENCY_BUDGET;
use crate::index::{GraphSettings, Quantization};

/// The environment variable that overrides `active_model`.
pub const ACTIVE_MODEL_ENV: &str = "REEMBED_ACTIVE_MODEL";

/// Why the registry file could not become a registry; each names what to fix.
#[derive(Debug, thiserror::Error)]
pub enum RegistryError {
    /// The file is missing or unreadable.
    #[error("cannot read the model registry {path}: {error}")]
    Read {
        path: PathBuf,
        error: std::io::Error,
    },
    /// Not TOML, a missing or unknown field, a value of the wrong type or zero where a count
    /// is expected; the message points at the line.
    #[error("invalid model registry: {0}")]
    Parse(String),
    /// Also when two ids differ only in case or punctuation: their environment variables
    /// would be the same.
    #[error("model id {0:?} is configured twice (or twice up to case and punctuation)")]
    DuplicateId(String),
    /// `active_model` (or `REEMBED_ACTIVE_MODEL`) names no configured model.
    #[error("active_model {0:?} is not among the configured models")]
    UnknownActiveModel(String),
    /// A model's fields do not fit together: a builtin that does not exist, a missing
    /// `base_url`, a URL that is not http(s), a key where a variable name belongs.
    #[error("model {model}: {message}")]
    InvalidModel { model: String, message: String },
    /// The variable named by `api_key_env` is unset or empty, and the server is not local.
    #[error("model {model}: environment variable {variable} (its api_key_env) is not set")]
    MissingKey { model: String, variable: String },
}

/// The file's shape.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RegistryFile {
    active_model: String,
    models: Vec<ModelTable>,
}

/// One `[[models]]` table. Flat rather than an enum tagged by `provider`, so that a parse
/// error points at the offending line instead of the first `[[models]]`; which fields each
/// provider takes is checked in `build`. See `OpenAiSettings` for the meaning of each field.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct ModelTable {
    id: String,
    provider: Provider,
    dimensions: NonZeroUsize,
    base_url: Option<String>,
    model: Option<String>,
    api_key_env: Option<String>,
    send_dimensions: Option<bool>,
    max_batch: Option<NonZeroUsize>,
    requests_per_minute: Option<NonZeroU32>,
    tokens_per_minute: Option<NonZeroU32>,
    timeout_secs: Option<NonZeroU64>,
    query_prefix: Option<String>,
    document_prefix: Option<String>,
    interactive_latency_budget_ms: Option<u64>,
    /// The model's input limit in estimated tokens: longer documents are still embedded (the
    /// server truncates them) but flagged as truncated. Not an `OpenAiSettings` field: the
    /// registry keeps it (`ModelRegistry::is_over_input_limit`).
    max_input_tokens: Option<NonZeroU32>,
    /// How the model's approximate index is built and searched; defaults when absent.
    index: Option<IndexTable>,
    /// What the provider bills per million tokens, for any provider; unpriced when absent.
    /// Not an `OpenAiSettings` field: the registry keeps it (`ModelRegistry::price`).
    price_per_million_tokens: Option<f64>,
}

/// A model's `index` table: `GraphSettings`, each field defaulting to its default.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct IndexTable {
    quantization: Option<Quantization>,
    connectivity: Option<NonZeroUsize>,
    expansion_add: Option<NonZeroUsize>,
    expansion_search: Option<NonZeroUsize>,
    candidates_per_hit: Option<NonZeroUsize>,
}

impl IndexTable {
    fn settings(&self) -> GraphSettings {
        let default = GraphSettings::default();
        let or = |value: Option<NonZeroUsize>, default| value.map_or(default, NonZeroUsize::get);
        GraphSettings {
            quantization: self.quantization.unwrap_or(default.quantization),
            connectivity: or(self.connectivity, default.connectivity),
            expansion_add: or(self.expansion_add, default.expansion_add),
            expansion_search: or(self.expansion_search, default.expansion_search),
            candidates_per_hit: or(self.candidates_per_hit, default.candidates_per_hit),
        }
    }
}

/// Who computes a model's vectors; also `ModelInfo::provider`.
#[derive(Debug, Clone, Copy, Deserialize)]
#[serde(rename_all = "lowercase")]
enum Provider {
    /// `hash-v1` or `hash-v2`, computed in process.
    Builtin,
    /// An OpenAI-compatible embeddings server.
    Openai,
}

/// Reads an environment variable; a parameter so tests need not touch the process's own.
type Env<'a> = &'a dyn Fn(&str) -> Option<String>;

/// A registry entry ready to insert: the model, its embedder and its input limit.
type Built = (ModelInfo, Arc<dyn Embedder>, Option<u32>);

impl ModelRegistry {
    /// The registry described by the TOML file at `path`, with the process environment's
    /// overrides and keys.
    pub fn from_file(path: &Path) -> Result<Self, RegistryError> {
        let text = std::fs::read_to_string(path).map_err(|error| RegistryError::Read {
            path: path.to_owned(),
            error,
        })?;
        Self::from_toml_str(&text, &|name| std::env::var(name).ok())
    }

    /// The registry described by `text`, reading overrides and keys through `env`.
    pub fn from_toml_str(text: &str, env: Env<'_>) -> Result<Self, RegistryError> {
        let mut file: RegistryFile =
            toml::from_str(text).map_err(|error| RegistryError::Parse(one_line(&error, text)))?;
        if let Some(active) = non_empty(env, ACTIVE_MODEL_ENV) {
            file.active_model = active;
        }
        check_ids(&file)?;
        let mut registry = ModelRegistry::new(file.active_model);
        for mut table in file.models {
            let index = table.index.take();
            let price = table.price()?;
            let (info, embedder, max_input_tokens) = table.build(env)?;
            let id = info.id.clone();
            registry.insert_with_input_limit(info, embedder, max_input_tokens);
            registry.set_price(&id, price);
            if let Some(index) = index {
                registry.set_index_settings(&id, index.settings());
            }
        }
        Ok(registry)
    }
}

/// The variable overriding the `base_url` of the model `id`.
pub fn base_url_env_var(id: &str) -> String {
    format!("REEMBED_MODEL_{}_BASE_URL", env_key(id))
}

fn env_key(id: &str) -> String {
    id.chars()
        .map(|c| match c {
            'a'..='z' | 'A'..='Z' | '0'..='9' => c.to_ascii_uppercase(),
            _ => '_',
        })
        .collect()
}

/// A TOML error in one line: where it points, the line it points at, and its message (toml's
/// own rendering quotes the file over several lines).
fn one_line(error: &toml::de::Error, text: &str) -> String {
    let message = error.message().trim();
    let Some(span) = error.span() else {
        return message.to_owned();
    };
    let start = span.start.min(text.len());
    let line_start = text[..start].rfind('\n').map_or(0, |i| i + 1);
    let line_end = text[start..].find('\n').map_or(text.len(), |i| start + i);
    let line = text[..start].matches('\n').count() + 1;
    let column = start - line_start + 1;
    let quoted = text[line_start..line_end].trim();
    format!("line {line}, column {column} (`{quoted}`): {message}")
}

/// Ids must be present and unique — also as environment keys, or one override would hit two models —
/// and the active model must be one of them.
fn check_ids(file: &RegistryFile) -> Result<(), RegistryError> {
    let mut keys = std::collections::HashSet::new();
    for table in &file.models {
        if table.id.trim().is_empty() {
            return Err(invalid(&table.id, "id must not be blank"));
        }
        if !keys.insert(env_key(&table.id)) {
            return Err(RegistryError::DuplicateId(table.id.clone()));
        }
    }
    match file
        .models
        .iter()
        .any(|table| table.id == file.active_model)
    {
        true => Ok(()),
        false => Err(RegistryError::UnknownActiveModel(file.active_model.clone())),
    }
}

impl ModelTable {
    /// `price_per_million_tokens`, when it is a finite number ≥ 0.
    fn price(&self) -> Result<Option<f64>, RegistryError> {
        match self.price_per_million_tokens {
            Some(price) if !(price >= 0.0 && price.is_finite()) => Err(invalid(
                &self.id,
                &format!("price_per_million_tokens must be a number >= 0, got {price}"),
            )),
            price => Ok(price),
        }
    }

    fn build(self, env: Env<'_>) -> Result<Built, RegistryError> {
        match self.provider {
            Provider::Builtin => self.build_builtin(),
            Provider::Openai => self.build_openai(env),
        }
    }

    fn build_builtin(self) -> Result<Built, RegistryError> {
        if let Some(field) = self.openai_fields_set().first() {
            let message = format!("{field} is for provider = \"openai\" only");
            return Err(invalid(&self.id, &message));
        }
        let embedder = match self.id.as_str() {
            "hash-v1" => HashEmbedder::hash_v1(),
            "hash-v2" => HashEmbedder::hash_v2(),
            _ => {
                return Err(invalid(
                    &self.id,
                    "the builtin models are hash-v1 and hash-v2",
                ));
            }
        };
        let (fixed, asked) = (embedder.dimensions(), self.dimensions.get());
        if asked != fixed {
            let message = format!("{} has {fixed} dimensions, not {asked}", self.id);
            return Err(invalid(&self.id, &message));
        }
        let info = model_info(self.id, "builtin", fixed);
        Ok((info, Arc::new(embedder), None))
    }

    /// The fields only an `openai` model takes that this table sets.
    fn openai_fields_set(&self) -> Vec<&'static str> {
        [
            ("base_url", self.base_url.is_some()),
            ("model", self.model.is_some()),
            ("api_key_env", self.api_key_env.is_some()),
            ("send_dimensions", self.send_dimensions.is_some()),
            ("max_batch", self.max_batch.is_some()),
            ("requests_per_minute", self.requests_per_minute.is_some()),
            ("tokens_per_minute", self.tokens_per_minute.is_some()),
            ("timeout_secs", self.timeout_secs.is_some()),
            ("query_prefix", self.query_prefix.is_some()),
            ("document_prefix", self.document_prefix.is_some()),
            (
                "interactive_latency_budget_ms",
                self.interactive_latency_budget_ms.is_some(),
            ),
            ("max_input_tokens", self.max_input_tokens.is_some()),
        ]
        .into_iter()
        .filter_map(|(field, set)| set.then_some(field))
        .collect()
    }

    fn build_openai(self, env: Env<'_>) -> Result<Built, RegistryError> {
        let id = self.id.clone();
        let base_url = non_empty(env, &base_url_env_var(&id))
            .or_else(|| self.base_url.clone())
            .ok_or_else(|| invalid(&id, "base_url is required for provider = \"openai\""))?;
        let base_url = parse_base_url(&base_url).map_err(|message| invalid(&id, &message))?;
        let api_key = self.api_key(&base_url, env)?;
        let dimensions = self.dimensions.get();
        let max_input_tokens = self.max_input_tokens.map(NonZeroU32::get);
        let settings = self.openai_settings(base_url, api_key)?;
        let embedder = OpenAiEmbedder::new(settings).map_err(|e| invalid(&id, &e.to_string()))?;
        let info = model_info(id, "openai", dimensions);
        Ok((info, Arc::new(embedder), max_input_tokens))
    }

    /// The key named by `api_key_env` (see the module doc for when it may be missing).
    fn api_key(&self, base_url: &Url, env: Env<'_>) -> Result<Option<String>, RegistryError> {
        let Some(variable) = &self.api_key_env else {
            return Ok(None);
        };
        if !is_variable_name(variable) {
            let message = "api_key_env must name an environment variable (letters, digits, `_`), \
                           never hold the key itself";
            return Err(invalid(&self.id, message));
        }
        match non_empty(env, variable) {
            Some(key) => Ok(Some(key)),
            None if is_loopback(base_url) => Ok(None),
            None => Err(RegistryError::MissingKey {
                model: self.id.clone(),
                variable: variable.clone(),
            }),
        }
    }

    fn openai_settings(
        self,
        base_url: Url,
        api_key: Option<String>,
    ) -> Result<OpenAiSettings, RegistryError> {
        let model = self.model.filter(|model| !model.trim().is_empty());
        let Some(model) = model else {
            let message = "model is required for provider = \"openai\": the provider's model name";
            return Err(invalid(&self.id, message));
        };
        let timeout = self
            .timeout_secs
            .map(|secs| Duration::from_secs(secs.get()));
        Ok(OpenAiSettings {
            api_key,
            send_dimensions: self.send_dimensions.unwrap_or(false),
            max_batch: self.max_batch.unwrap_or(DEFAULT_MAX_BATCH),
            requests_per_minute: self.requests_per_minute,
            tokens_per_minute: self.tokens_per_minute,
            timeout: timeout.unwrap_or(DEFAULT_TIMEOUT),
            query_prefix: self.query_prefix.unwrap_or_default(),
            document_prefix: self.document_prefix.unwrap_or_default(),
            interactive_latency_budget: self
                .interactive_latency_budget_ms
                .map_or(DEFAULT_LATENCY_BUDGET, Duration::from_millis),
            ..OpenAiSettings::new(base_url, model, self.dimensions.get())
        })
    }
}

fn parse_base_url(text: &str) -> Result<Url, String> {
    let url = Url::parse(text).map_err(|error| format!("base_url {text:?}: {error}"))?;
    match url.scheme() {
        "http" | "https" if url.host().is_some() => Ok(url),
        _ => Err(format!(
            "base_url {text:?} must be an http:// or https:// URL with a host"
        )),
    }
}

/// Whether `url` points at this machine, where servers usually run without keys.
fn is_loopback(url: &Url) -> bool {
    let host = url.host_str().unwrap_or_default();
    let ip = host.trim_start_matches('[').trim_end_matches(']');
    host.eq_ignore_ascii_case("localhost") || ip.parse::<IpAddr>().is_ok_and(|ip| ip.is_loopback())
}

fn is_variable_name(name: &str) -> bool {
    let mut chars = name.chars();
    chars
        .next()
        .is_some_and(|c| c.is_ascii_alphabetic() || c == '_')
        && chars.all(|c| c.is_ascii_alphanumeric() || c == '_')
}

fn non_empty(env: Env<'_>, name: &str) -> Option<String> {
    env(name).filter(|value| !value.is_empty())
}

fn model_info(id: String, provider: &str, dimensions: usize) -> ModelInfo {
    ModelInfo {
        id,
        provider: provider.into(),
        dimensions,
    }
}

fn invalid(model: &str, message: &str) -> RegistryError {
    RegistryError::InvalidModel {
        model: model.into(),
        message: message.into(),
    }
}

#[cfg(test)]
#[path = "registry_file_tests.rs"]
mod tests;
