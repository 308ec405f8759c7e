//! A migration's history (`GET /v1/migrations/{id}/history`): what happened to it, when, on
//! which replica and on whose behalf, in words a person can read back after an incident.
//!
//! Every entry is decided here from the event and the migration before and after it; the
//! store persists it in the same transaction as the change it describes, so the history never
//! tells of a change that was not made, nor misses one that was.

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use utoipa::ToSchema;

use super::config::BackfillConfig;
use super::evaluation::{Evaluation, ModelScores};
use super::gate::CutoverGate;
use super::migration::{Event, Migration};

/// What kind of thing happened (API.md "Confidence": `kind`).
///
/// Persisted as its snake_case name: renaming a variant needs a data migration.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum HistoryKind {
    Created,
    Started,
    Paused,
    Resumed,
    Cancelled,
    Failed,
    ConfigChanged,
    SkipsRetried,
    Completed,
    RolledBack,
    Finalized,
    /// The rollback window ended (elapsed, or finalized) and the target became the active model.
    WindowClosed,
    /// A labelled evaluation of the two models was run and kept.
    Evaluated,
    /// An operator cut over past the cutover gate.
    GateOverridden,
    /// The cutover gate's conditions held when the migration completed.
    GatePassed,
    /// The backfill paused itself: its next batch would have taken the cost past `max_cost`.
    BudgetPaused,
    /// The source model's vectors were deleted after the target became active.
    SourceVectorsDeleted,
}

impl HistoryKind {
    /// Every kind, for parsing persisted names.
    pub const ALL: [HistoryKind; 17] = [
        Self::Created,
        Self::Started,
        Self::Paused,
        Self::Resumed,
        Self::Cancelled,
        Self::Failed,
        Self::ConfigChanged,
        Self::SkipsRetried,
        Self::Completed,
        Self::RolledBack,
        Self::Finalized,
        Self::WindowClosed,
        Self::Evaluated,
        Self::GateOverridden,
        Self::GatePassed,
        Self::BudgetPaused,
        Self::SourceVectorsDeleted,
    ];

    /// The wire and storage name.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Created => "created",
            Self::Started => "started",
            Self::Paused => "paused",
            Self::Resumed => "resumed",
            Self::Cancelled => "cancelled",
            Self::Failed => "failed",
            Self::ConfigChanged => "config_changed",
            Self::SkipsRetried => "skips_retried",
            Self::Completed => "completed",
            Self::RolledBack => "rolled_back",
            Self::Finalized => "finalized",
            Self::WindowClosed => "window_closed",
            Self::Evaluated => "evaluated",
            Self::GateOverridden => "gate_overridden",
            Self::GatePassed => "gate_passed",
            Self::BudgetPaused => "budget_paused",
            Self::SourceVectorsDeleted => "source_vectors_deleted",
        }
    }

    /// Parses a persisted name; `None` for anything else.
    pub fn parse(name: &str) -> Option<Self> {
        Self::ALL.into_iter().find(|k| k.as_str() == name)
    }
}

/// On whose behalf a change was made: the kind of credential of the request that asked for
/// it, or the service itself.
///
/// Persisted as its snake_case name.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum Actor {
    /// A request with the write token.
    WriteToken,
    /// A request to a server without tokens configured: anyone who could reach it.
    Anonymous,
    /// The service on its own: the backfill completing, a provider failing, a window ending.
    Service,
}

impl Actor {
    /// Every actor, for parsing persisted names.
    pub const ALL: [Actor; 3] = [Self::WriteToken, Self::Anonymous, Self::Service];

    /// The wire and storage name.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::WriteToken => "write_token",
            Self::Anonymous => "anonymous",
            Self::Service => "service",
        }
    }

    /// Parses a persisted name; `None` for anything else.
    pub fn parse(name: &str) -> Option<Self> {
        Self::ALL.into_iter().find(|a| a.as_str() == name)
    }
}

/// Who caused a change: the replica that made it and on whose behalf.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Cause {
    /// The replica's id (`--replica-id`).
    pub replica: String,
    pub actor: Actor,
}

/// One entry of a migration's history.
#[derive(Debug, Clone, PartialEq, Serialize, ToSchema)]
pub struct HistoryEvent {
    /// The migration it belongs to (not in the API's entries, which are listed per migration).
    #[serde(skip)]
    pub migration_id: String,
    pub at: DateTime<Utc>,
    pub kind: HistoryKind,
    /// What happened, in words: the changed fields, the reason, the error.
    pub detail: String,
    /// The replica that made the change.
    pub replica: String,
    pub actor: Actor,
}

impl HistoryEvent {
    /// An entry of `kind` for `migration_id`, made at `at` by `cause`.
    pub fn new(
        migration_id: &str,
        kind: HistoryKind,
        detail: String,
        at: DateTime<Utc>,
        cause: &Cause,
    ) -> Self {
        Self {
            migration_id: migration_id.to_owned(),
            at,
            kind,
            detail,
            replica: cause.replica.clone(),
            actor: cause.actor,
        }
    }

    /// The entry for `created`: the migration as it was recorded.
    pub fn created(migration: &Migration, at: DateTime<Utc>, cause: &Cause) -> Self {
        let detail = format!(
            "from {} to {}; {}",
            migration.source_model,
            migration.target_model,
            describe_config(&migration.config)
        );
        Self::new(&migration.id, HistoryKind::Created, detail, at, cause)
    }

    /// The entry for `event`, which moved `before` to `after` at `at`.
    pub fn of(
        event: &Event,
        before: &Migration,
        after: &Migration,
        at: DateTime<Utc>,
        cause: &Cause,
    ) -> Self {
        let (kind, detail) = describe(event, before, after);
        Self::new(&before.id, kind, detail, at, cause)
    }

    /// The entry for the end of `migration`'s rollback window: its target became active.
    pub fn window_closed(migration: &Migration, at: DateTime<Utc>, cause: &Cause) -> Self {
        let detail = format!(
            "{} is now the active model; writes go to it alone",
            migration.target_model
        );
        Self::new(&migration.id, HistoryKind::WindowClosed, detail, at, cause)
    }

    /// The entry for the end of the cleanup after `migration`'s switch: `deleted` vectors of
    /// its source model are gone from the store and its index.
    pub fn source_vectors_deleted(
        migration: &Migration,
        deleted: u64,
        at: DateTime<Utc>,
        cause: &Cause,
    ) -> Self {
        let detail = format!(
            "{deleted} vectors of {} deleted; its index is freed",
            migration.source_model
        );
        Self::new(
            &migration.id,
            HistoryKind::SourceVectorsDeleted,
            detail,
            at,
            cause,
        )
    }

    /// The entry for a labelled evaluation of `migration_id`'s two models.
    pub fn evaluated(migration_id: &str, evaluation: &Evaluation, cause: &Cause) -> Self {
        let side = |s: &ModelScores| {
            format!(
                "{} recall {:.3}, MRR {:.3}, nDCG {:.3}",
                s.model, s.recall, s.mrr, s.ndcg
            )
        };
        let detail = format!(
            "{} queries at k {} ({} relevant ids excluded): {}; {}",
            evaluation.queries,
            evaluation.k,
            evaluation.excluded_relevant,
            side(&evaluation.source),
            side(&evaluation.target)
        );
        Self::new(
            migration_id,
            HistoryKind::Evaluated,
            detail,
            evaluation.at,
            cause,
        )
    }
}

/// The kind and words of `event`, which moved `before` to `after`.
fn describe(event: &Event, before: &Migration, after: &Migration) -> (HistoryKind, String) {
    match event {
        Event::Start => (
            HistoryKind::Started,
            format!(
                "documents lacking a current {} vector are queued",
                after.target_model
            ),
        ),
        Event::Pause { reason } => (
            HistoryKind::Paused,
            reason
                .clone()
                .unwrap_or_else(|| "no reason given".to_owned()),
        ),
        Event::Resume => (HistoryKind::Resumed, format!("from {}", before.state)),
        Event::Cancel => (HistoryKind::Cancelled, format!("from {}", before.state)),
        Event::Rollback => (
            HistoryKind::RolledBack,
            format!(
                "from {}; queries and writes go to {} alone",
                before.state, before.source_model
            ),
        ),
        Event::Finalize => (
            HistoryKind::Finalized,
            "the rollback window was ended early".to_owned(),
        ),
        Event::Complete => (
            HistoryKind::Completed,
            format!(
                "{} processed, {} skipped of {}",
                after.counts.processed, after.counts.skipped, after.counts.total
            ),
        ),
        Event::Fail { error } => (HistoryKind::Failed, error.clone()),
        Event::PauseForBudget { reason } => (HistoryKind::BudgetPaused, reason.clone()),
        Event::Reconfigure { config } => (
            HistoryKind::ConfigChanged,
            config_changes(&before.config, config),
        ),
        Event::OverrideGate { reason } => (HistoryKind::GateOverridden, reason.clone()),
        Event::RetrySkips => (
            HistoryKind::SkipsRetried,
            format!("{} skipped documents queued again", before.counts.skipped),
        ),
    }
}

/// Every field of a config, for the entry of its creation.
fn describe_config(config: &BackfillConfig) -> String {
    config_fields(config)
        .into_iter()
        .map(|(field, value)| format!("{field} {value}"))
        .collect::<Vec<_>>()
        .join(", ")
}

/// The fields that differ between `before` and `after`, as "field old → new".
fn config_changes(before: &BackfillConfig, after: &BackfillConfig) -> String {
    let changes: Vec<String> = config_fields(before)
        .into_iter()
        .zip(config_fields(after))
        .filter(|((_, old), (_, new))| old != new)
        .map(|((field, old), (_, new))| format!("{field} {old} → {new}"))
        .collect();
    if changes.is_empty() {
        return "nothing changed".to_owned();
    }
    changes.join(", ")
}

/// A config's fields as (name, value) in the order of API.md.
fn config_fields(config: &BackfillConfig) -> Vec<(&'static str, String)> {
    vec![
        ("batch_size", config.batch_size.to_string()),
        ("max_concurrent", config.max_concurrent.to_string()),
        ("dual_write", config.dual_write.to_string()),
        (
            "target_query_threshold",
            config.target_query_threshold.to_string(),
        ),
        (
            "rollback_window_secs",
            config.rollback_window_secs.to_string(),
        ),
        ("canary_percent", config.canary_percent.to_string()),
        ("shadow_percent", config.shadow_percent.to_string()),
        ("cutover_gate", describe_gate(config.cutover_gate.as_ref())),
        (
            "max_cost",
            config
                .max_cost
                .map_or_else(|| "none".to_owned(), |cost| cost.to_string()),
        ),
        (
            "retain_source_vectors",
            config.retain_source_vectors.to_string(),
        ),
    ]
}

/// A gate's conditions as its JSON, or "none".
fn describe_gate(gate: Option<&CutoverGate>) -> String {
    gate.and_then(|g| serde_json::to_string(g).ok())
        .unwrap_or_else(|| "none".to_owned())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::domain::MigrationState;

    fn cause() -> Cause {
        Cause {
            replica: "host:8080".to_owned(),
            actor: Actor::WriteToken,
        }
    }

    fn migration() -> Migration {
        Migration::plan(
            "m1".to_owned(),
            "hash-v1".to_owned(),
            "hash-v2".to_owned(),
            BackfillConfig::default(),
            Utc::now(),
        )
    }

    #[test]
    fn kinds_and_actors_round_trip_through_their_names() {
        for kind in HistoryKind::ALL {
            assert_eq!(HistoryKind::parse(kind.as_str()), Some(kind));
            let json = serde_json::to_value(kind).expect("serializes");
            assert_eq!(json, kind.as_str());
        }
        for actor in Actor::ALL {
            assert_eq!(Actor::parse(actor.as_str()), Some(actor));
            assert_eq!(
                serde_json::to_value(actor).expect("serializes"),
                actor.as_str()
            );
        }
        assert_eq!(HistoryKind::parse("exploded"), None);
    }

    #[test]
    fn a_config_change_names_each_changed_field_with_its_old_and_new_value() {
        let before = migration();
        let config = BackfillConfig {
            batch_size: 200,
            target_query_threshold: 0.9,
            ..before.config
        };
        let event = Event::Reconfigure { config };
        let after = before.apply(event.clone(), Utc::now()).expect("legal");
        let entry = HistoryEvent::of(&event, &before, &after, Utc::now(), &cause());
        assert_eq!(entry.kind, HistoryKind::ConfigChanged);
        assert_eq!(
            entry.detail,
            "batch_size 100 → 200, target_query_threshold 0.8 → 0.9"
        );
        assert_eq!(
            (entry.replica.as_str(), entry.actor),
            ("host:8080", Actor::WriteToken)
        );
    }

    #[test]
    fn a_pause_keeps_its_reason_and_a_failure_its_error() {
        let now = Utc::now();
        let running = migration().apply(Event::Start, now).expect("legal");
        let pause = Event::Pause {
            reason: Some("provider maintenance".to_owned()),
        };
        let paused = running.apply(pause.clone(), now).expect("legal");
        let entry = HistoryEvent::of(&pause, &running, &paused, now, &cause());
        assert_eq!(
            (entry.kind, entry.detail.as_str()),
            (HistoryKind::Paused, "provider maintenance")
        );
        let fail = Event::Fail {
            error: "provider down for 10 min".to_owned(),
        };
        let failed = running.apply(fail.clone(), now).expect("legal");
        assert_eq!(failed.state, MigrationState::Failed);
        let entry = HistoryEvent::of(&fail, &running, &failed, now, &cause());
        assert_eq!(
            (entry.kind, entry.detail.as_str()),
            (HistoryKind::Failed, "provider down for 10 min")
        );
    }

    #[test]
    fn creation_records_the_models_and_every_config_field() {
        let entry = HistoryEvent::created(&migration(), Utc::now(), &cause());
        assert_eq!(entry.kind, HistoryKind::Created);
        assert_eq!(
            entry.detail,
            "from hash-v1 to hash-v2; batch_size 100, max_concurrent 4, dual_write true, \
             target_query_threshold 0.8, rollback_window_secs 86400, canary_percent 0, \
             shadow_percent 0, cutover_gate none, max_cost none, retain_source_vectors false"
        );
    }
}
