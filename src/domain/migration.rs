//! The migration lifecycle: states, events and the one function that moves between them.
//!
//! Mirrors the state table of API.md row for row; `Migration::apply` is the only way a
//! migration changes state or config (and decides when its skips may be retried), and it
//! never mutates in place, so a caller can persist the new
//! value first and publish it only once the store has committed it.

use chrono::{DateTime, Duration, Utc};
use serde::{Deserialize, Serialize};
use utoipa::ToSchema;

use super::config::BackfillConfig;
use super::evaluation::Evaluation;
use super::gate::{self, GateOverride, GateStatus, ShadowEvidence};

/// Lifecycle state of a migration (API.md "States").
///
/// Persisted as its snake_case name: renaming a variant needs a data migration.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum MigrationState {
    Planned,
    InProgress,
    Paused,
    Failed,
    Completed,
    Cancelled,
    RolledBack,
}

impl MigrationState {
    /// Every state, for exhaustive tests and for parsing persisted names.
    pub const ALL: [MigrationState; 7] = [
        Self::Planned,
        Self::InProgress,
        Self::Paused,
        Self::Failed,
        Self::Completed,
        Self::Cancelled,
        Self::RolledBack,
    ];

    /// The wire and storage name.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Planned => "planned",
            Self::InProgress => "in_progress",
            Self::Paused => "paused",
            Self::Failed => "failed",
            Self::Completed => "completed",
            Self::Cancelled => "cancelled",
            Self::RolledBack => "rolled_back",
        }
    }

    /// Parses a persisted name; `None` for anything else.
    pub fn parse(name: &str) -> Option<Self> {
        Self::ALL.into_iter().find(|s| s.as_str() == name)
    }

    /// Started and not yet finished: the backfill owns work in these states and writes must
    /// keep the target index consistent (vector written or document queued).
    pub fn is_backfilling(self) -> bool {
        matches!(self, Self::InProgress | Self::Paused | Self::Failed)
    }
}

impl std::fmt::Display for MigrationState {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// What can happen to a migration: the operator calls of API.md plus the two automatic ones.
#[derive(Debug, Clone, PartialEq)]
pub enum Event {
    Start,
    Pause {
        reason: Option<String>,
    },
    Resume,
    Cancel,
    Rollback,
    Finalize,
    /// The backfill found no work left: processed + skipped ≥ total.
    Complete,
    /// The provider kept failing.
    Fail {
        error: String,
    },
    /// The backfill's next batch would take the cost past `max_cost` (`domain::cost`); the
    /// reason names the budget. Lifted by `Resume` like any pause.
    PauseForBudget {
        reason: String,
    },
    /// A new config (PATCH), already validated; the state stays.
    Reconfigure {
        config: BackfillConfig,
    },
    /// The skipped documents go back on the queue (the store requeues them); the state stays.
    RetrySkips,
    /// The operator cuts over past the cutover gate, saying why; the state stays.
    OverrideGate {
        reason: String,
    },
}

impl Event {
    /// The call name used in errors ("cannot pause a migration in state completed").
    pub fn name(&self) -> &'static str {
        match self {
            Self::Start => "start",
            Self::Pause { .. } => "pause",
            Self::Resume => "resume",
            Self::Cancel => "cancel",
            Self::Rollback => "rollback",
            Self::Finalize => "finalize",
            Self::Complete => "complete",
            Self::Fail { .. } => "fail",
            Self::PauseForBudget { .. } => "pause",
            Self::Reconfigure { .. } => "reconfigure",
            Self::RetrySkips => "retry the skips of",
            Self::OverrideGate { .. } => "cut over",
        }
    }
}

/// Document counts of one migration (API.md progress fields).
///
/// `total` counts documents that lacked a current target vector at start plus those queued
/// later, less those deleted before their batch; `processed` and `skipped` only grow.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Counts {
    pub total: u64,
    pub processed: u64,
    pub skipped: u64,
    /// Queued documents whose latest embedding attempt failed: they wait for another, and
    /// stop counting once it succeeds (or they leave the queue otherwise).
    pub failed: u64,
    /// Processed documents whose target vector was embedded from a text longer than the
    /// target's `max_input_tokens` (the provider truncated it); only grows, and never exceeds
    /// `processed`.
    pub truncated: u64,
    /// Tokens the migration's backfill batches were billed for (`domain::cost`); only grows.
    pub tokens_embedded: u64,
}

impl Counts {
    /// Documents still to embed.
    pub fn remaining(&self) -> u64 {
        self.total
            .saturating_sub(self.processed.saturating_add(self.skipped))
    }

    /// processed / (total − skipped); 1.0 when nothing is left to embed at all.
    pub fn coverage(&self) -> f64 {
        let denominator = self.total.saturating_sub(self.skipped);
        if denominator == 0 {
            1.0
        } else {
            (self.processed as f64 / denominator as f64).min(1.0)
        }
    }

    /// Whether every counted document is either processed or skipped.
    pub fn is_done(&self) -> bool {
        self.remaining() == 0
    }
}

/// One migration from `source_model` to `target_model`.
#[derive(Debug, Clone, PartialEq)]
pub struct Migration {
    pub id: String,
    pub source_model: String,
    pub target_model: String,
    pub config: BackfillConfig,
    pub state: MigrationState,
    pub created_at: DateTime<Utc>,
    pub started_at: Option<DateTime<Utc>>,
    pub completed_at: Option<DateTime<Utc>>,
    /// Wall-clock end of the rollback window; finalize moves it to "now".
    pub rollback_window_ends_at: Option<DateTime<Utc>>,
    /// Why the migration failed; cleared by resume.
    pub error: Option<String>,
    /// What the operator gave as the reason for the current pause; cleared by resume.
    pub pause_reason: Option<String>,
    pub counts: Counts,
    /// The last labelled evaluation of the two models (`POST .../evaluate`), if any.
    pub evaluation: Option<Evaluation>,
    /// An operator's cutover past the gate (`POST .../cutover`), if any.
    pub gate_override: Option<GateOverride>,
    /// What the shadow reads of every replica showed so far (counted with the samples).
    pub shadow: ShadowEvidence,
    /// The deletion of the source model's vectors once the target is active.
    pub cleanup: SourceCleanup,
}

/// How far the deletion of a switched migration's source vectors has come (persisted).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct SourceCleanup {
    /// Vectors of the source model deleted so far, by every replica.
    pub deleted: u64,
    /// When the last of them was deleted.
    pub done_at: Option<DateTime<Utc>>,
}

/// Where the deletion of a migration's source vectors stands (progress `source_cleanup`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum CleanupState {
    /// The target is not the active model (yet, or ever): the source's vectors are needed.
    Waiting,
    /// `retain_source_vectors` keeps them.
    Retained,
    /// Being deleted in the background.
    Deleting,
    /// All deleted, and the source's index freed.
    Done,
}

/// An event that the current state does not accept (API.md: 409 `invalid-transition`).
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
#[error("cannot {event} a migration in state {state}{}", unmet.as_ref().map_or(String::new(), |why| format!(": {why}")))]
pub struct TransitionError {
    pub event: &'static str,
    pub state: MigrationState,
    /// What the state lacks when it would otherwise accept the event (repairs still queued).
    pub unmet: Option<String>,
}

impl Migration {
    /// A new migration in state `planned` with zero counts.
    pub fn plan(
        id: String,
        source_model: String,
        target_model: String,
        config: BackfillConfig,
        now: DateTime<Utc>,
    ) -> Self {
        Self {
            id,
            source_model,
            target_model,
            config,
            state: MigrationState::Planned,
            created_at: now,
            started_at: None,
            completed_at: None,
            rollback_window_ends_at: None,
            error: None,
            pause_reason: None,
            counts: Counts::default(),
            evaluation: None,
            gate_override: None,
            shadow: ShadowEvidence::default(),
            cleanup: SourceCleanup::default(),
        }
    }

    /// Returns the migration after `event` at `now`, or why the event is illegal here.
    pub fn apply(&self, event: Event, now: DateTime<Utc>) -> Result<Self, TransitionError> {
        use MigrationState::*;
        let illegal = || TransitionError {
            event: event.name(),
            state: self.state,
            unmet: None,
        };
        let mut next = self.clone();
        match (&event, self.state) {
            (Event::Start, Planned) => {
                next.state = InProgress;
                next.started_at = Some(now);
            }
            (Event::Pause { reason }, InProgress) => {
                next.state = Paused;
                next.pause_reason = reason.clone();
            }
            (Event::PauseForBudget { reason }, InProgress) => {
                next.state = Paused;
                next.pause_reason = Some(reason.clone());
            }
            (Event::Resume, Paused | Failed) => {
                next.state = InProgress;
                next.error = None;
                next.pause_reason = None;
            }
            (Event::Cancel, Planned | InProgress | Paused | Failed) => next.state = Cancelled,
            (Event::Rollback, InProgress | Paused | Failed) => next.state = RolledBack,
            (Event::Rollback, Completed) if self.window_open(now) => next.state = RolledBack,
            (Event::Finalize, Completed) if self.repairs_pending() > 0 => {
                return Err(TransitionError {
                    unmet: Some(self.repairs_unmet()),
                    ..illegal()
                });
            }
            (Event::Finalize, Completed) if self.window_open(now) => {
                next.rollback_window_ends_at = Some(now);
            }
            (Event::Complete, InProgress) if self.counts.is_done() && !self.gate_blocks() => {
                next.state = Completed;
                next.completed_at = Some(now);
                next.rollback_window_ends_at = Some(window_end(now, self.config));
            }
            (Event::Complete, InProgress) if self.counts.is_done() => {
                return Err(TransitionError {
                    unmet: Some(format!(
                        "its cutover gate is blocked: {}",
                        self.gate().reason
                    )),
                    ..illegal()
                });
            }
            (Event::Fail { error }, InProgress) => {
                next.state = Failed;
                next.error = Some(error.clone());
            }
            (Event::Reconfigure { config }, Planned | InProgress | Paused | Failed) => {
                next.config = *config;
            }
            (Event::RetrySkips, InProgress | Paused | Failed) => {}
            (Event::OverrideGate { .. }, InProgress) if self.config.cutover_gate.is_none() => {
                return Err(TransitionError {
                    unmet: Some("it has no cutover gate".to_owned()),
                    ..illegal()
                });
            }
            (Event::OverrideGate { reason }, InProgress) => {
                next.gate_override = Some(GateOverride {
                    at: now,
                    reason: reason.clone(),
                });
            }
            _ => return Err(illegal()),
        }
        Ok(next)
    }

    /// Whether the source model's vectors are due for deletion at `now`: it completed, its
    /// rollback window is over (so rollback is no longer possible and the target is active),
    /// they are not retained, and their deletion has not finished.
    pub fn needs_cleanup(&self, now: DateTime<Utc>) -> bool {
        self.cleanup_state(now) == CleanupState::Deleting
    }

    /// Where the deletion of its source vectors stands at `now`.
    pub fn cleanup_state(&self, now: DateTime<Utc>) -> CleanupState {
        if self.state != MigrationState::Completed || self.window_open(now) {
            CleanupState::Waiting
        } else if self.config.retain_source_vectors {
            CleanupState::Retained
        } else if self.cleanup.done_at.is_some() {
            CleanupState::Done
        } else {
            CleanupState::Deleting
        }
    }

    /// Where its cutover gate stands on the evidence it holds (`domain::gate`).
    pub fn gate(&self) -> GateStatus {
        gate::check(
            self.config.cutover_gate.as_ref(),
            self.gate_override.as_ref(),
            self.shadow,
            self.evaluation.as_ref(),
        )
    }

    /// Whether its cutover gate holds queries on the source at the threshold and keeps it from
    /// completing.
    pub fn gate_blocks(&self) -> bool {
        !self.gate().lets_through()
    }

    /// Completed, and `now` is before the end of the rollback window or documents still wait
    /// for repair (`repairs_pending`).
    pub fn window_open(&self, now: DateTime<Utc>) -> bool {
        window_open(self.state, &self.counts, self.rollback_window_ends_at, now)
    }

    /// Whether backfill batches may claim its queued documents: while it is in progress, and
    /// while it is completed with repairs queued (`repairs_pending`). A paused or failed
    /// migration keeps its queue but takes no claims.
    pub fn takes_claims(&self) -> bool {
        self.state == MigrationState::InProgress || self.repairs_pending() > 0
    }

    /// Documents written during the rollback window while the target was unreachable, queued
    /// until the target has embedded them: the window cannot end before, or the target would
    /// become active without them.
    pub fn repairs_pending(&self) -> u64 {
        if self.state == MigrationState::Completed {
            self.counts.remaining()
        } else {
            0
        }
    }

    fn repairs_unmet(&self) -> String {
        format!(
            "{} documents written while the target model was unreachable wait to be embedded \
             with it; the rollback window ends once they are",
            self.repairs_pending()
        )
    }

    /// Completed and the rollback window has ended: the target is the active model.
    pub fn is_cut_over(&self, now: DateTime<Utc>) -> bool {
        self.state == MigrationState::Completed && !self.window_open(now)
    }

    /// Open migrations block a new one (API.md: 409 `migration-open`): everything but
    /// cancelled, rolled back, and completed with its window over.
    pub fn is_open(&self, now: DateTime<Utc>) -> bool {
        match self.state {
            MigrationState::Cancelled | MigrationState::RolledBack => false,
            MigrationState::Completed => self.window_open(now),
            _ => true,
        }
    }

    /// The model that holds the authoritative index once this migration is settled.
    pub fn settled_model(&self, now: DateTime<Utc>) -> &str {
        if self.is_cut_over(now) {
            &self.target_model
        } else {
            &self.source_model
        }
    }
}

/// `now` plus the rollback window, saturating at the last representable instant: a window
/// that ends past the end of time never ends, and `apply` must not panic on any clock.
fn window_end(now: DateTime<Utc>, config: BackfillConfig) -> DateTime<Utc> {
    i64::try_from(config.rollback_window_secs)
        .ok()
        .and_then(Duration::try_seconds)
        .and_then(|window| now.checked_add_signed(window))
        .unwrap_or(DateTime::<Utc>::MAX_UTC)
}

/// Whether the rollback window of a migration in `state`, with `counts` and a window ending at
/// `window_ends_at`, is open at `now`: completed, and before the end or with documents still
/// waiting for repair (their count is what `counts` has left to embed). The one rule behind
/// `Migration::window_open` and the write path's view of the latest migration
/// (`queue::QueueView`), which has only the stored row.
pub fn window_open(
    state: MigrationState,
    counts: &Counts,
    window_ends_at: Option<DateTime<Utc>>,
    now: DateTime<Utc>,
) -> bool {
    state == MigrationState::Completed
        && (window_ends_at.is_some_and(|end| now < end) || counts.remaining() > 0)
}

#[cfg(test)]
mod tests {
    use super::*;
    use MigrationState::*;

    const WINDOW_SECS: u64 = 3600;

    fn at(secs: i64) -> DateTime<Utc> {
        DateTime::from_timestamp(1_700_000_000 + secs, 0).unwrap()
    }

    fn counts(total: u64, processed: u64, skipped: u64) -> Counts {
        Counts {
            total,
            processed,
            skipped,
            failed: 0,
            truncated: 0,
            tokens_embedded: 0,
        }
    }

    fn planned(window_secs: u64) -> Migration {
        let config = BackfillConfig {
            rollback_window_secs: window_secs,
            ..Default::default()
        };
        Migration::plan(
            "mig-1".into(),
            "hash-v1".into(),
            "hash-v2".into(),
            config,
            at(0),
        )
    }

    fn apply(m: &Migration, event: Event, secs: i64) -> Migration {
        m.apply(event.clone(), at(secs))
            .unwrap_or_else(|e| panic!("{} from {}: {e}", event.name(), m.state))
    }

    /// A migration in `state`, reached by legal events only, with all its documents done:
    /// started at 10, paused/failed/cancelled/rolled back at 20, completed at 100 (so its
    /// window ends at 100 + WINDOW_SECS).
    fn in_state(state: MigrationState) -> Migration {
        let mut m = planned(WINDOW_SECS);
        m.counts = counts(10, 8, 2);
        if state == Planned {
            return m;
        }
        if state == Cancelled {
            return apply(&m, Event::Cancel, 20);
        }
        let running = apply(&m, Event::Start, 10);
        match state {
            InProgress => running,
            Paused => apply(&running, Event::Pause { reason: None }, 20),
            Failed => apply(
                &running,
                Event::Fail {
                    error: "down".into(),
                },
                20,
            ),
            Completed => apply(&running, Event::Complete, 100),
            RolledBack => apply(&running, Event::Rollback, 20),
            Planned | Cancelled => unreachable!(),
        }
    }

    fn every_event() -> [Event; 11] {
        [
            Event::Reconfigure {
                config: BackfillConfig {
                    batch_size: 7,
                    ..BackfillConfig::default()
                },
            },
            Event::RetrySkips,
            Event::Start,
            Event::Pause {
                reason: Some("slow down".into()),
            },
            Event::Resume,
            Event::Cancel,
            Event::Rollback,
            Event::Finalize,
            Event::Complete,
            Event::Fail {
                error: "provider down".into(),
            },
            Event::PauseForBudget {
                reason: "budget: over".into(),
            },
        ]
    }

    /// API.md's state table, one entry per accepted (call, state) pair; a completed migration
    /// is taken inside its window.
    const LEGAL: [(&str, MigrationState, MigrationState); 22] = [
        ("start", Planned, InProgress),
        ("pause", InProgress, Paused),
        ("resume", Paused, InProgress),
        ("resume", Failed, InProgress),
        ("cancel", Planned, Cancelled),
        ("cancel", InProgress, Cancelled),
        ("cancel", Paused, Cancelled),
        ("cancel", Failed, Cancelled),
        ("complete", InProgress, Completed),
        ("fail", InProgress, Failed),
        ("rollback", InProgress, RolledBack),
        ("rollback", Paused, RolledBack),
        ("rollback", Failed, RolledBack),
        ("rollback", Completed, RolledBack),
        ("finalize", Completed, Completed),
        ("reconfigure", Planned, Planned),
        ("reconfigure", InProgress, InProgress),
        ("reconfigure", Paused, Paused),
        ("reconfigure", Failed, Failed),
        ("retry the skips of", InProgress, InProgress),
        ("retry the skips of", Paused, Paused),
        ("retry the skips of", Failed, Failed),
    ];

    #[test]
    fn every_event_in_every_state_follows_the_state_table() {
        let now = at(200); // inside the window of in_state(Completed)
        let mut accepted = 0;
        for state in MigrationState::ALL {
            for event in every_event() {
                let name = event.name();
                let m = in_state(state);
                assert_eq!(m.state, state);
                let expected = LEGAL
                    .iter()
                    .find(|(e, from, _)| *e == name && *from == state)
                    .map(|(_, _, to)| *to);
                match (m.apply(event, now), expected) {
                    (Ok(next), Some(to)) => {
                        assert_eq!(next.state, to, "{name} from {state}");
                        assert_eq!(next.counts, m.counts, "{name} must not touch counts");
                        accepted += 1;
                    }
                    (Err(err), None) => {
                        assert_eq!(
                            err,
                            TransitionError {
                                event: name,
                                state,
                                unmet: None
                            }
                        );
                        let text = err.to_string();
                        assert_eq!(text, format!("cannot {name} a migration in state {state}"));
                    }
                    (result, expected) => {
                        panic!("{name} from {state}: got {result:?}, expected {expected:?}")
                    }
                }
            }
        }
        // A budget pause is a pause: accepted where `pause` is.
        assert_eq!(accepted, LEGAL.len() + 1);
    }

    #[test]
    fn a_budget_pause_keeps_its_reason_until_resumed() {
        let reason = "budget: the next batch would bring the cost to 2 over max_cost 1";
        let paused = in_state(InProgress)
            .apply(
                Event::PauseForBudget {
                    reason: reason.into(),
                },
                at(10),
            )
            .expect("legal");
        assert_eq!(
            (paused.state, paused.pause_reason.as_deref()),
            (Paused, Some(reason))
        );
        let resumed = paused.apply(Event::Resume, at(11)).expect("legal");
        assert_eq!((resumed.state, resumed.pause_reason), (InProgress, None));
    }

    #[test]
    fn reconfigure_replaces_the_config_and_nothing_else() {
        let paused = in_state(Paused);
        let config = BackfillConfig {
            batch_size: 7,
            max_concurrent: 1,
            ..paused.config
        };
        let next = paused.apply(Event::Reconfigure { config }, at(50)).unwrap();
        assert_eq!(next, Migration { config, ..paused });
    }

    #[test]
    fn plan_starts_planned_with_no_timestamps_and_zero_counts() {
        let m = planned(WINDOW_SECS);
        assert_eq!(m.state, Planned);
        assert_eq!(m.created_at, at(0));
        assert_eq!(
            (m.started_at, m.completed_at, m.rollback_window_ends_at),
            (None, None, None)
        );
        assert_eq!((m.error, m.pause_reason), (None, None));
        assert_eq!(m.counts, Counts::default());
    }

    #[test]
    fn start_sets_started_at() {
        let m = apply(&planned(WINDOW_SECS), Event::Start, 10);
        assert_eq!(m.started_at, Some(at(10)));
        assert_eq!((m.completed_at, m.rollback_window_ends_at), (None, None));
    }

    #[test]
    fn complete_sets_completed_at_and_the_window_end() {
        let running = in_state(InProgress);
        let m = apply(&running, Event::Complete, 100);
        assert_eq!(m.state, Completed);
        assert_eq!(m.started_at, Some(at(10)));
        assert_eq!(m.completed_at, Some(at(100)));
        assert_eq!(
            m.rollback_window_ends_at,
            Some(at(100 + WINDOW_SECS as i64))
        );
    }

    #[test]
    fn finalize_ends_the_window_now_and_cuts_over() {
        let completed = in_state(Completed);
        assert!(completed.window_open(at(500)));
        let m = apply(&completed, Event::Finalize, 500);
        assert_eq!(m.state, Completed);
        assert_eq!(m.completed_at, Some(at(100)));
        assert_eq!(m.rollback_window_ends_at, Some(at(500)));
        assert!(!m.window_open(at(500)));
        assert!(m.is_cut_over(at(500)));
        assert!(!m.is_open(at(500)));
        assert_eq!(m.settled_model(at(500)), "hash-v2");
        for event in [Event::Rollback, Event::Finalize] {
            let err = m.apply(event, at(500)).expect_err("window already ended");
            assert_eq!(err.state, Completed);
        }
    }

    #[test]
    fn rollback_and_finalize_of_completed_are_accepted_only_inside_the_window() {
        let completed = in_state(Completed);
        let end = 100 + WINDOW_SECS as i64;
        // (seconds since the epoch of `at`, window open?)
        let cases = [
            (100, true),
            (101, true),
            (end - 1, true),
            (end, false),
            (end + 1, false),
        ];
        for (secs, open) in cases {
            assert_eq!(completed.window_open(at(secs)), open, "at {secs}");
            assert_eq!(completed.is_cut_over(at(secs)), !open, "at {secs}");
            for event in [Event::Rollback, Event::Finalize] {
                let name = event.name();
                match completed.apply(event, at(secs)) {
                    Ok(next) => {
                        assert!(open, "{name} accepted at {secs}, after the window");
                        let to = if name == "rollback" {
                            RolledBack
                        } else {
                            Completed
                        };
                        assert_eq!(next.state, to);
                    }
                    Err(err) => {
                        assert!(!open, "{name} refused at {secs}, inside the window");
                        assert_eq!(
                            err,
                            TransitionError {
                                event: name,
                                state: Completed,
                                unmet: None,
                            }
                        );
                    }
                }
            }
        }
    }

    #[test]
    fn complete_is_refused_while_documents_remain() {
        let running = apply(&planned(WINDOW_SECS), Event::Start, 10);
        // (total, processed, skipped, accepted?)
        let cases = [
            (10, 0, 0, false),
            (10, 9, 0, false),
            (10, 5, 4, false),
            (10, 0, 9, false),
            (10, 10, 0, true),
            (10, 5, 5, true),
            (10, 0, 10, true),
        ];
        for (total, processed, skipped, accepted) in cases {
            let mut m = running.clone();
            m.counts = counts(total, processed, skipped);
            let result = m.apply(Event::Complete, at(20));
            assert_eq!(result.is_ok(), accepted, "{:?}", m.counts);
            if let Err(err) = result {
                assert_eq!(
                    err,
                    TransitionError {
                        event: "complete",
                        state: InProgress,
                        unmet: None,
                    }
                );
            }
        }
    }

    #[test]
    fn an_empty_corpus_completes_right_after_start() {
        let m = apply(&planned(WINDOW_SECS), Event::Start, 10);
        assert_eq!(m.counts.total, 0);
        let m = apply(&m, Event::Complete, 10);
        assert_eq!(m.state, Completed);
        assert_eq!(m.completed_at, Some(at(10)));
        assert!(m.window_open(at(10)));
    }

    #[test]
    fn a_zero_window_goes_straight_to_stable_on_the_target() {
        use crate::domain::routing::{Phase, Route, route};
        let m = apply(&planned(0), Event::Start, 10);
        let m = apply(&m, Event::Complete, 20);
        assert_eq!(m.rollback_window_ends_at, Some(at(20)));
        assert!(!m.window_open(at(20)));
        assert!(m.is_cut_over(at(20)));
        assert!(!m.is_open(at(20)));
        assert!(m.apply(Event::Rollback, at(20)).is_err());
        assert!(m.apply(Event::Finalize, at(20)).is_err());
        let r = route("hash-v1", Some(&m), at(20));
        assert_eq!(r.phase, Phase::Stable);
        assert_eq!(r.query_model, "hash-v2");
        assert_eq!(r.write_models, ["hash-v2"]);
        assert_eq!(
            (r.query_route, r.write_route),
            (Route::Target, Route::Target)
        );
    }

    #[test]
    fn pause_records_its_reason_fail_its_error_and_resume_clears_both() {
        let running = in_state(InProgress);
        let paused = apply(
            &running,
            Event::Pause {
                reason: Some("night".into()),
            },
            20,
        );
        assert_eq!(paused.pause_reason.as_deref(), Some("night"));
        let resumed = apply(&paused, Event::Resume, 30);
        assert_eq!(resumed.pause_reason, None);
        assert_eq!(
            resumed.started_at,
            Some(at(10)),
            "resume is not a new start"
        );

        let failed = apply(
            &resumed,
            Event::Fail {
                error: "503 from provider".into(),
            },
            40,
        );
        assert_eq!(failed.error.as_deref(), Some("503 from provider"));
        let resumed = apply(&failed, Event::Resume, 50);
        assert_eq!((resumed.state, resumed.error), (InProgress, None));
    }

    #[test]
    fn is_open_in_every_state() {
        let end = 100 + WINDOW_SECS as i64;
        // (state, open inside the window, open after it)
        let cases = [
            (Planned, true, true),
            (InProgress, true, true),
            (Paused, true, true),
            (Failed, true, true),
            (Completed, true, false),
            (Cancelled, false, false),
            (RolledBack, false, false),
        ];
        for (state, inside, after) in cases {
            let m = in_state(state);
            assert_eq!(m.is_open(at(end - 1)), inside, "{state} inside the window");
            assert_eq!(m.is_open(at(end)), after, "{state} at the window's end");
            assert_eq!(m.is_open(at(end + 86_400)), after, "{state} long after");
        }
    }

    #[test]
    fn settled_model_is_the_target_only_once_cut_over() {
        let end = 100 + WINDOW_SECS as i64;
        for state in MigrationState::ALL {
            let m = in_state(state);
            assert_eq!(m.settled_model(at(end - 1)), "hash-v1", "{state}");
            let after = if state == Completed {
                "hash-v2"
            } else {
                "hash-v1"
            };
            assert_eq!(m.settled_model(at(end)), after, "{state}");
        }
    }

    #[test]
    fn counts_remaining_coverage_and_done() {
        // (total, processed, skipped, remaining, coverage, done)
        let cases = [
            (0, 0, 0, 0, 1.0, true),
            (10, 0, 0, 10, 0.0, false),
            (10, 4, 0, 6, 0.4, false),
            (10, 4, 5, 1, 0.8, false),
            (10, 5, 5, 0, 1.0, true),
            (5, 0, 5, 0, 1.0, true),
            (10, 12, 0, 0, 1.0, true),
        ];
        for (total, processed, skipped, remaining, coverage, done) in cases {
            let c = counts(total, processed, skipped);
            assert_eq!(c.remaining(), remaining, "{c:?}");
            assert_eq!(c.coverage(), coverage, "{c:?}");
            assert_eq!(c.is_done(), done, "{c:?}");
        }
    }

    #[test]
    fn remaining_saturates_instead_of_overflowing() {
        let c = counts(5, u64::MAX, 1);
        assert_eq!(c.remaining(), 0);
        assert!(c.is_done());
    }

    #[test]
    fn a_window_past_the_end_of_time_saturates_instead_of_panicking() {
        let mut running = in_state(InProgress);
        let end_of_time = DateTime::<Utc>::MAX_UTC;
        let m = running.apply(Event::Complete, end_of_time).unwrap();
        assert_eq!(m.rollback_window_ends_at, Some(end_of_time));
        // A window too long for a Duration (only an unvalidated config can hold one).
        running.config.rollback_window_secs = u64::MAX;
        let m = running.apply(Event::Complete, at(100)).unwrap();
        assert_eq!(m.rollback_window_ends_at, Some(end_of_time));
        assert!(m.window_open(at(100)));
    }

    #[test]
    fn state_names_are_snake_case_on_the_wire_and_in_storage() {
        let names = [
            "planned",
            "in_progress",
            "paused",
            "failed",
            "completed",
            "cancelled",
            "rolled_back",
        ];
        for (state, name) in MigrationState::ALL.into_iter().zip(names) {
            assert_eq!(state.as_str(), name);
            assert_eq!(state.to_string(), name);
            assert_eq!(MigrationState::parse(name), Some(state));
            assert_eq!(serde_json::to_value(state).unwrap(), name);
            assert_eq!(
                serde_json::from_value::<MigrationState>(name.into()).unwrap(),
                state
            );
        }
        assert_eq!(MigrationState::parse("InProgress"), None);
        assert_eq!(MigrationState::parse(""), None);
    }

    #[test]
    fn only_started_unfinished_states_are_backfilling() {
        let backfilling: Vec<_> = MigrationState::ALL
            .into_iter()
            .filter(|s| s.is_backfilling())
            .collect();
        assert_eq!(backfilling, [InProgress, Paused, Failed]);
    }

    /// A completed migration with `repairs` documents written while its target was down.
    fn awaiting_repairs(repairs: u64) -> Migration {
        let mut m = in_state(Completed);
        m.counts.total += repairs;
        m
    }

    #[test]
    fn repairs_keep_the_rollback_window_open_past_its_end() {
        let end = 100 + WINDOW_SECS as i64;
        let m = awaiting_repairs(2);
        assert_eq!(m.repairs_pending(), 2);
        assert!(m.window_open(at(end)), "repairs pending at the deadline");
        assert!(m.window_open(at(end + 86_400)));
        assert_eq!(
            m.settled_model(at(end + 86_400)),
            "hash-v1",
            "the source stays active"
        );
        assert!(m.is_open(at(end)), "no new migration while repairs wait");
        assert_eq!(awaiting_repairs(0).repairs_pending(), 0);
        assert!(!awaiting_repairs(0).window_open(at(end)));
        // Only a completed migration repairs; a running one is simply not done.
        assert_eq!(in_state(InProgress).repairs_pending(), 0);
    }

    #[test]
    fn finalize_is_refused_while_repairs_wait_and_names_them() {
        let m = awaiting_repairs(3);
        let refused = m.apply(Event::Finalize, at(200)).unwrap_err();
        assert_eq!((refused.event, refused.state), ("finalize", Completed));
        let text = refused.to_string();
        assert!(
            text.starts_with("cannot finalize a migration in state completed: 3 documents"),
            "{text}"
        );
        // Rolling back needs no repair: the source holds every document.
        assert_eq!(apply(&m, Event::Rollback, 200).state, RolledBack);
        let repaired = awaiting_repairs(0);
        assert!(repaired.apply(Event::Finalize, at(200)).is_ok());
    }
}
