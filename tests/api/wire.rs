//! The response bodies of API.md, as the tests read them. Every field is required unless
//! API.md shows it as nullable, so decoding a reply already checks its shape. States, phases
//! and routes stay strings, so assertions read like the contract's tables.

use std::collections::BTreeMap;

use chrono::{DateTime, Utc};
use serde::Deserialize;
use serde_json::Value;

/// `PUT /v1/documents/{id}` and each entry of a bulk upsert's `results`.
#[derive(Debug, Clone, Deserialize)]
pub struct Written {
    pub id: String,
    pub version: u64,
    pub embedded_with: Vec<String>,
    pub write_route: String,
}

/// `POST /v1/documents`.
#[derive(Debug, Deserialize)]
pub struct BulkResults {
    pub results: Vec<Written>,
}

/// `GET /v1/documents/{id}`.
#[derive(Debug, Clone, Deserialize)]
pub struct Document {
    pub id: String,
    pub text: String,
    pub metadata: Value,
    pub version: u64,
    pub embeddings: BTreeMap<String, Embedding>,
    /// Longer than the `max_input_tokens` of a model holding a vector for it.
    pub truncated: bool,
}

/// One model's vector of a document: which document version it embeds.
#[derive(Debug, Clone, Copy, PartialEq, Deserialize)]
pub struct Embedding {
    pub version: u64,
    pub dimensions: usize,
}

impl Document {
    /// The version `model`'s vector embeds, if the model holds one.
    pub fn vector_version(&self, model: &str) -> Option<u64> {
        self.embeddings.get(model).map(|e| e.version)
    }

    /// Whether `model` holds a vector for the newest version of this document.
    pub fn is_current_in(&self, model: &str) -> bool {
        self.vector_version(model) == Some(self.version)
    }
}

/// `GET /v1/documents?limit=&after=`.
#[derive(Debug, Deserialize)]
pub struct DocumentPage {
    pub documents: Vec<Document>,
    pub next_after: Option<String>,
}

/// `POST /v1/query`.
#[derive(Debug, Deserialize)]
pub struct QueryResult {
    pub route: String,
    pub model: String,
    pub phase: String,
    pub migration_id: Option<String>,
    pub reason: String,
    pub exact: bool,
    pub hits: Vec<Hit>,
}

#[derive(Debug, Deserialize)]
pub struct Hit {
    pub id: String,
    pub score: f64,
    pub text: String,
    pub metadata: Value,
}

impl QueryResult {
    pub fn hit_ids(&self) -> Vec<&str> {
        self.hits.iter().map(|h| h.id.as_str()).collect()
    }
}

/// `GET /v1/routing`.
#[derive(Debug, Clone, Deserialize)]
pub struct Routing {
    pub phase: String,
    pub query_model: String,
    pub write_models: Vec<String>,
    pub migration_id: Option<String>,
    pub query_route: String,
    pub write_route: String,
    pub progress: f64,
    pub snapshot_age_ms: u64,
}

/// `GET /v1/models`.
#[derive(Debug, Deserialize)]
pub struct Models {
    pub active_model: String,
    pub models: Vec<ModelInfo>,
}

#[derive(Debug, PartialEq, Deserialize)]
pub struct ModelInfo {
    pub id: String,
    pub provider: String,
    pub dimensions: usize,
}

/// `GET /v1/migrations/{id}` and the body of every lifecycle call.
#[derive(Debug, Clone, PartialEq, Deserialize)]
pub struct Migration {
    pub id: String,
    pub source_model: String,
    pub target_model: String,
    pub config: MigrationConfig,
    pub state: String,
    pub created_at: DateTime<Utc>,
    pub started_at: Option<DateTime<Utc>>,
    pub completed_at: Option<DateTime<Utc>>,
    pub rollback_window_ends_at: Option<DateTime<Utc>>,
    pub error: Option<String>,
}

#[derive(Debug, Clone, PartialEq, Deserialize)]
pub struct MigrationConfig {
    pub batch_size: u64,
    pub max_concurrent: u64,
    pub dual_write: bool,
    pub target_query_threshold: f64,
    pub rollback_window_secs: u64,
    pub canary_percent: f64,
    pub shadow_percent: f64,
}

/// `GET /v1/migrations`.
#[derive(Debug, Deserialize)]
pub struct MigrationList {
    pub migrations: Vec<Migration>,
}

/// `GET /v1/migrations/{id}/progress`.
#[derive(Debug, Clone, Deserialize)]
pub struct Progress {
    pub id: String,
    pub state: String,
    pub phase: String,
    pub total: u64,
    pub processed: u64,
    pub skipped: u64,
    pub failed: u64,
    pub truncated: u64,
    pub remaining: u64,
    pub progress: f64,
    pub coverage: f64,
    pub throughput_per_sec: Option<f64>,
    pub eta_secs: Option<f64>,
    pub in_flight_batches: u64,
    pub replicas: Vec<Replica>,
    pub query_route: String,
    pub gate: Gate,
    pub source_cleanup: SourceCleanup,
    pub throttle_reason: Option<String>,
    pub waiting: Option<Waiting>,
    pub tokens_embedded: u64,
    pub cost_so_far: Option<f64>,
    pub cost_remaining_estimate: Option<f64>,
    pub updated_at: DateTime<Utc>,
}

/// Progress `source_cleanup`: the deletion of the source model's vectors after the switch.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SourceCleanup {
    pub state: String,
    pub deleted: u64,
}

/// Progress `gate`: where the cutover gate stands and why.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Gate {
    pub state: String,
    pub reason: String,
}

/// Progress `replicas`: one replica's share of the backfill.
#[derive(Debug, Clone, PartialEq, Deserialize)]
pub struct Replica {
    pub id: String,
    pub in_flight_batches: u64,
    pub processed: u64,
}

/// Progress `waiting`: the provider the backfill waits for.
#[derive(Debug, Clone, Deserialize)]
pub struct Waiting {
    pub model: String,
    pub since: DateTime<Utc>,
    pub last_error: String,
}

/// `GET /v1/migrations/{id}/skips`.
#[derive(Debug, Deserialize)]
pub struct Skips {
    pub skips: Vec<Skip>,
}

#[derive(Debug, Deserialize)]
pub struct Skip {
    pub document_id: String,
    pub reason: String,
    pub at: DateTime<Utc>,
}

/// `GET /v1/migrations/{id}/history`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct History {
    pub events: Vec<HistoryEntry>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct HistoryEntry {
    pub at: DateTime<Utc>,
    pub kind: String,
    pub detail: String,
    pub replica: String,
    pub actor: String,
}

/// `GET /v1/migrations/{id}/comparison`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Comparison {
    pub samples: u64,
    pub dropped: u64,
    pub k: u64,
    pub mean_overlap: Option<f64>,
    pub p10_overlap: Option<f64>,
    pub source_latency_ms: Latency,
    pub target_latency_ms: Latency,
    pub worst: Vec<WorstQuery>,
}

/// A side's latency in a comparison, in milliseconds.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Latency {
    pub p50: Option<f64>,
    pub p99: Option<f64>,
}

/// One of a comparison's `worst` queries.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct WorstQuery {
    pub text: String,
    pub overlap: f64,
    pub source_hits: Vec<String>,
    pub target_hits: Vec<String>,
}

/// An RFC 9457 problem document.
#[derive(Debug, Deserialize)]
pub struct Problem {
    #[serde(rename = "type")]
    pub kind: String,
    pub title: String,
    pub status: u16,
    #[serde(default)]
    pub detail: Option<String>,
}

impl Problem {
    pub fn detail(&self) -> &str {
        self.detail.as_deref().unwrap_or_default()
    }
}
