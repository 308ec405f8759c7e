//! What the client reads from the service (API.md "Routing" and "Migrations"), and how each
//! answer prints as `key: value` lines.
//!
//! These are the client's own, lenient copies of the server's types: they take only the
//! fields the client prints and ignore the rest, and keep states and phases as strings, so a
//! client stays usable against a server that has grown new fields or states.

use std::fmt::Display;
use std::io::Write;

use chrono::{DateTime, SecondsFormat, Utc};
use serde::Deserialize;

/// States in which a migration will not move again by itself (API.md state table).
const SETTLED: [&str; 4] = ["completed", "failed", "cancelled", "rolled_back"];

/// One printed line: a key and its value.
pub type Field = (&'static str, String);

/// `GET /v1/routing`.
#[derive(Debug, Deserialize)]
pub struct Routing {
    pub phase: String,
    pub query_model: String,
    pub write_models: Vec<String>,
}

/// API.md's migration, as `GET /v1/migrations/{id}` and every lifecycle call answer it.
#[derive(Debug, Deserialize)]
pub struct Migration {
    pub id: String,
    pub state: String,
    pub source_model: String,
    pub target_model: String,
    pub config: MigrationConfig,
    pub created_at: Option<DateTime<Utc>>,
    pub started_at: Option<DateTime<Utc>>,
    pub completed_at: Option<DateTime<Utc>>,
    pub rollback_window_ends_at: Option<DateTime<Utc>>,
    pub error: Option<String>,
    pub pause_reason: Option<String>,
}

/// A migration's config (API.md `POST /v1/migrations` `config`).
#[derive(Debug, Deserialize)]
pub struct MigrationConfig {
    pub batch_size: u64,
    pub max_concurrent: u64,
    pub dual_write: bool,
    pub target_query_threshold: f64,
    pub rollback_window_secs: u64,
    /// The confidence fields (API.md "Confidence") default as the server defaults them, so
    /// the client still reads a server that predates them.
    #[serde(default)]
    pub shadow_percent: f64,
    #[serde(default)]
    pub canary_percent: f64,
    #[serde(default)]
    pub cutover_gate: Option<CutoverGate>,
    #[serde(default)]
    pub max_cost: Option<f64>,
    #[serde(default)]
    pub retain_source_vectors: bool,
}

/// A config's `cutover_gate`: the conditions that must hold before queries switch.
#[derive(Debug, Deserialize)]
pub struct CutoverGate {
    pub min_samples: Option<u64>,
    pub min_overlap: Option<f64>,
    pub min_recall_ratio: Option<f64>,
}

/// One entry of `GET /v1/migrations/{id}/history`.
#[derive(Debug, Deserialize)]
pub struct HistoryEvent {
    pub at: DateTime<Utc>,
    pub kind: String,
    pub detail: String,
    pub actor: String,
    pub replica: String,
}

/// `GET /v1/migrations/{id}/history`, oldest first.
#[derive(Debug, Deserialize)]
pub struct History {
    pub events: Vec<HistoryEvent>,
}

/// `GET /v1/migrations`, newest first.
#[derive(Debug, Deserialize)]
pub struct MigrationList {
    pub migrations: Vec<Migration>,
}

/// `GET /v1/migrations/{id}/progress`.
#[derive(Debug, Deserialize)]
pub struct Progress {
    pub state: String,
    pub total: u64,
    pub processed: u64,
    pub skipped: u64,
    pub failed: u64,
    pub coverage: f64,
    /// Null until the server can estimate it.
    pub throughput_per_sec: Option<f64>,
    pub eta_secs: Option<f64>,
    /// Absent from a server that predates the cutover gate.
    #[serde(default)]
    pub gate: Option<Gate>,
    #[serde(default)]
    pub tokens_embedded: Option<u64>,
    /// Null when the target model has no price.
    #[serde(default)]
    pub cost_so_far: Option<f64>,
    #[serde(default)]
    pub cost_remaining_estimate: Option<f64>,
    #[serde(default)]
    pub source_cleanup: Option<SourceCleanup>,
}

/// Progress `gate`: where the cutover gate stands, and why in words.
#[derive(Debug, Deserialize)]
pub struct Gate {
    pub state: String,
    pub reason: String,
}

/// Progress `source_cleanup`: the deletion of the source model's vectors after the switch.
#[derive(Debug, Deserialize)]
pub struct SourceCleanup {
    pub state: String,
    pub deleted: u64,
}

/// The answer of `POST /v1/migrations` with `"dry_run": true`.
#[derive(Debug, Deserialize)]
pub struct MigrationPlan {
    pub source_model: String,
    pub target_model: String,
    pub config: MigrationConfig,
    pub documents: u64,
    pub estimated_tokens: u64,
    pub estimated_secs: Option<f64>,
}

/// The answer of `POST /v1/documents`: one result per document written.
#[derive(Debug, Deserialize)]
pub struct BulkResult {
    pub results: Vec<serde::de::IgnoredAny>,
}

impl Routing {
    /// Phase and models, the first lines of `status`.
    pub fn fields(&self) -> Vec<Field> {
        vec![
            ("phase", self.phase.clone()),
            ("query_model", self.query_model.clone()),
            ("write_models", self.write_models.join(", ")),
        ]
    }
}

impl Migration {
    /// Every line `migrate` and the lifecycle calls print.
    pub fn fields(&self) -> Vec<Field> {
        let mut fields = vec![
            ("id", self.id.clone()),
            ("state", self.state.clone()),
            ("source_model", self.source_model.clone()),
            ("target_model", self.target_model.clone()),
        ];
        fields.extend(self.config.fields());
        fields.extend([
            ("created_at", time(self.created_at)),
            ("started_at", time(self.started_at)),
        ]);
        fields.extend(self.outcome_fields());
        fields
    }

    /// Completion, rollback window, error and pause reason: what `status` adds to progress.
    pub fn outcome_fields(&self) -> Vec<Field> {
        let mut fields = vec![
            ("completed_at", time(self.completed_at)),
            (
                "rollback_window_ends_at",
                time(self.rollback_window_ends_at),
            ),
        ];
        fields.extend(self.error.clone().map(|e| ("error", e)));
        fields.extend(self.pause_reason.clone().map(|r| ("pause_reason", r)));
        fields
    }
}

impl MigrationConfig {
    fn fields(&self) -> Vec<Field> {
        vec![
            ("batch_size", self.batch_size.to_string()),
            ("max_concurrent", self.max_concurrent.to_string()),
            ("dual_write", self.dual_write.to_string()),
            (
                "target_query_threshold",
                self.target_query_threshold.to_string(),
            ),
            (
                "rollback_window_secs",
                self.rollback_window_secs.to_string(),
            ),
            ("shadow_percent", self.shadow_percent.to_string()),
            ("canary_percent", self.canary_percent.to_string()),
            (
                "cutover_gate",
                self.cutover_gate
                    .as_ref()
                    .map_or_else(|| "-".to_owned(), CutoverGate::describe),
            ),
            ("max_cost", optional(self.max_cost)),
            (
                "retain_source_vectors",
                self.retain_source_vectors.to_string(),
            ),
        ]
    }
}

impl CutoverGate {
    /// Its conditions as `min_samples 20, min_overlap 0.9`.
    fn describe(&self) -> String {
        let conditions = [
            self.min_samples.map(|n| format!("min_samples {n}")),
            self.min_overlap.map(|x| format!("min_overlap {x}")),
            self.min_recall_ratio
                .map(|r| format!("min_recall_ratio {r}")),
        ];
        conditions
            .into_iter()
            .flatten()
            .collect::<Vec<_>>()
            .join(", ")
    }
}

impl HistoryEvent {
    /// One history line: time, kind, who, and the detail in words.
    pub fn line(&self) -> String {
        let at = time(Some(self.at));
        let (kind, actor, replica) = (&self.kind, &self.actor, &self.replica);
        format!("{at} {kind} ({actor} on {replica}): {}", self.detail)
    }
}

impl Progress {
    /// Whether the migration has stopped moving for good (or until an operator resumes a
    /// failed one): what `status --watch` waits for.
    pub fn is_settled(&self) -> bool {
        SETTLED.contains(&self.state.as_str())
    }

    /// Documents done, processed or skipped: the position of a progress bar.
    pub fn done(&self) -> u64 {
        self.processed + self.skipped
    }

    /// Counts, coverage, throughput and ETA.
    pub fn fields(&self) -> Vec<Field> {
        vec![
            ("processed", format!("{}/{}", self.processed, self.total)),
            ("skipped", self.skipped.to_string()),
            ("failed", self.failed.to_string()),
            ("coverage", percent(self.coverage)),
            ("throughput", rate(self.throughput_per_sec)),
            ("eta", eta(self.eta_secs)),
        ]
    }

    /// The gate, the cost and the cleanup, each only when the server reports it.
    pub fn confidence_fields(&self) -> Vec<Field> {
        let mut fields = Vec::new();
        if let Some(gate) = self.gate.as_ref().filter(|g| g.state != "none") {
            fields.push(("gate", format!("{} ({})", gate.state, gate.reason)));
        }
        fields.extend(
            self.tokens_embedded
                .map(|t| ("tokens_embedded", t.to_string())),
        );
        if self.cost_so_far.is_some() {
            fields.push(("cost_so_far", optional(self.cost_so_far)));
            fields.push((
                "cost_remaining_estimate",
                optional(self.cost_remaining_estimate),
            ));
        }
        if let Some(cleanup) = &self.source_cleanup {
            let value = format!("{} ({} deleted)", cleanup.state, cleanup.deleted);
            fields.push(("source_cleanup", value));
        }
        fields
    }
}

impl MigrationPlan {
    /// The lines `migrate --dry-run` prints.
    pub fn fields(&self) -> Vec<Field> {
        let mut fields = vec![
            ("dry_run", "true".to_owned()),
            ("source_model", self.source_model.clone()),
            ("target_model", self.target_model.clone()),
            ("documents", self.documents.to_string()),
            ("estimated_tokens", self.estimated_tokens.to_string()),
            ("estimated_time", eta(self.estimated_secs)),
        ];
        fields.extend(self.config.fields());
        fields
    }
}

/// Prints `fields` as `key: value` lines on stdout. A closed stdout (`| head`) is not an
/// error worth reporting: the reader has what it wanted.
pub fn print(fields: &[Field]) {
    let mut out = std::io::stdout().lock();
    for (key, value) in fields {
        let _ = writeln!(out, "{key}: {value}");
    }
}

/// Prints one line on stdout, ignoring a closed stdout as `print` does.
pub fn say(line: impl Display) {
    let _ = writeln!(std::io::stdout().lock(), "{line}");
}

/// `0.1234` as `12.3%`.
pub fn percent(ratio: f64) -> String {
    format!("{:.1}%", ratio * 100.0)
}

/// A throughput as `12.3 docs/s`, or `-` while the server cannot estimate it yet.
pub fn rate(per_sec: Option<f64>) -> String {
    per_sec.map_or_else(|| "-".to_owned(), |rate| format!("{rate:.1} docs/s"))
}

/// Seconds as `1h 02m 03s`, `4m 05s` or `6s`; `-` when unknown (nothing moves yet).
pub fn eta(secs: Option<f64>) -> String {
    let Some(secs) = secs.filter(|s| s.is_finite() && *s >= 0.0) else {
        return "-".to_owned();
    };
    let secs = secs.ceil() as u64;
    let (h, m, s) = (secs / 3600, secs / 60 % 60, secs % 60);
    match (h, m) {
        (0, 0) => format!("{s}s"),
        (0, _) => format!("{m}m {s:02}s"),
        _ => format!("{h}h {m:02}m {s:02}s"),
    }
}

/// A number as the server sent it, `-` when absent.
fn optional(value: Option<f64>) -> String {
    value.map_or_else(|| "-".to_owned(), |v| v.to_string())
}

/// A time as RFC 3339 to the second, `-` when absent.
fn time(at: Option<DateTime<Utc>>) -> String {
    at.map_or_else(
        || "-".to_owned(),
        |t| t.to_rfc3339_opts(SecondsFormat::Secs, true),
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn eta_reads_like_a_clock() {
        assert_eq!(eta(None), "-");
        assert_eq!(eta(Some(f64::NAN)), "-");
        assert_eq!(eta(Some(0.2)), "1s");
        assert_eq!(eta(Some(65.0)), "1m 05s");
        assert_eq!(eta(Some(3723.0)), "1h 02m 03s");
    }

    #[test]
    fn progress_prints_counts_and_rates() {
        let progress: Progress = serde_json::from_str(
            r#"{"state": "in_progress", "total": 200, "processed": 50, "skipped": 2,
                "failed": 0, "coverage": 0.2551, "throughput_per_sec": 12.34,
                "eta_secs": 12.0, "unknown_field": true}"#,
        )
        .unwrap();
        let fields = progress.fields();
        assert_eq!(fields[0], ("processed", "50/200".to_owned()));
        assert_eq!(fields[3], ("coverage", "25.5%".to_owned()));
        assert_eq!(fields[4], ("throughput", "12.3 docs/s".to_owned()));
        assert_eq!(fields[5], ("eta", "12s".to_owned()));
        assert_eq!(progress.done(), 52);
        let unknown: Progress = serde_json::from_str(
            r#"{"state": "in_progress", "total": 200, "processed": 0, "skipped": 0,
                "failed": 0, "coverage": 0.0, "throughput_per_sec": null, "eta_secs": null}"#,
        )
        .unwrap();
        assert_eq!(unknown.fields()[4], ("throughput", "-".to_owned()));
        assert!(!progress.is_settled());
        assert!(progress.confidence_fields().is_empty(), "an older server");
    }

    #[test]
    fn the_gate_cost_and_cleanup_print_when_the_server_reports_them() {
        let progress: Progress = serde_json::from_str(
            r#"{"state": "in_progress", "total": 10, "processed": 10, "skipped": 0,
                "failed": 0, "coverage": 1.0, "throughput_per_sec": null, "eta_secs": 0.0,
                "gate": {"state": "blocked", "reason": "no labelled evaluation yet"},
                "tokens_embedded": 1200, "cost_so_far": 0.25, "cost_remaining_estimate": 0.0,
                "source_cleanup": {"state": "waiting", "deleted": 0}}"#,
        )
        .unwrap();
        let expected = [
            ("gate", "blocked (no labelled evaluation yet)"),
            ("tokens_embedded", "1200"),
            ("cost_so_far", "0.25"),
            ("cost_remaining_estimate", "0"),
            ("source_cleanup", "waiting (0 deleted)"),
        ];
        let expected: Vec<Field> = expected.map(|(k, v)| (k, v.to_owned())).to_vec();
        assert_eq!(progress.confidence_fields(), expected);
        let unpriced: Progress = serde_json::from_str(
            r#"{"state": "in_progress", "total": 10, "processed": 1, "skipped": 0,
                "failed": 0, "coverage": 0.1, "throughput_per_sec": null, "eta_secs": null,
                "gate": {"state": "none", "reason": "no cutover gate is set"},
                "tokens_embedded": 80, "cost_so_far": null, "cost_remaining_estimate": null}"#,
        )
        .unwrap();
        assert_eq!(
            unpriced.confidence_fields(),
            [("tokens_embedded", "80".to_owned())]
        );
    }

    #[test]
    fn a_gate_prints_its_conditions_and_a_history_entry_its_cause() {
        let gate: CutoverGate =
            serde_json::from_str(r#"{"min_samples": 20, "min_overlap": 0.9}"#).unwrap();
        assert_eq!(gate.describe(), "min_samples 20, min_overlap 0.9");
        let event: HistoryEvent = serde_json::from_str(
            r#"{"at": "2026-12-06T10:00:00.5Z", "kind": "gate_overridden",
                "detail": "read by hand", "actor": "write_token", "replica": "host:8080"}"#,
        )
        .unwrap();
        assert_eq!(
            event.line(),
            "2026-12-06T10:00:00Z gate_overridden (write_token on host:8080): read by hand"
        );
    }
}

#[cfg(test)]
#[path = "wire_tests.rs"]
mod contract_tests;
