//! The routing table of API.md as one pure function: which model answers queries, which
//! models a write embeds with, and which phase the service is in.

use std::sync::Arc;

use chrono::{DateTime, Utc};
use serde::Serialize;
use utoipa::ToSchema;

use super::canary::{RoutingKey, is_canary};
use super::migration::{Migration, MigrationState};
use super::shadow::ShadowShare;

/// Coarse phase of the service (API.md routing `phase`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum Phase {
    Stable,
    Migrating,
    RollbackWindow,
}

/// Side of the latest migration a query or write goes to (API.md `query_route`/`write_route`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum Route {
    /// The migration's source model, or the active model when none ever ran.
    Legacy,
    /// The migration's target model.
    Target,
    /// Both models.
    DualWrite,
}

/// Why a query is answered by the side it is (API.md query `reason`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum QueryReason {
    /// No migration routes queries elsewhere.
    Stable,
    /// Migrating, with the target's coverage under the threshold.
    BelowThreshold,
    /// Migrating, with the target's coverage at or over the threshold.
    ThresholdReached,
    /// Migrating, with the target's coverage at or over the threshold, but its cutover gate
    /// blocked: the source answers.
    GateBlocked,
    /// Migrating under the threshold, and the query's `routing_key` is in the canary share.
    Canary,
    /// Completed: the target answers while both models are written.
    RollbackWindow,
    /// The migration was rolled back: the source answers.
    RolledBack,
    /// The routed model's provider failed and the other model's index answered.
    Fallback,
}

/// One routing decision, complete enough to serve `GET /v1/routing`.
#[derive(Debug, Clone, PartialEq, Serialize, ToSchema)]
pub struct Routing {
    pub phase: Phase,
    pub query_model: String,
    pub write_models: Vec<String>,
    pub migration_id: Option<String>,
    pub query_route: Route,
    pub write_route: Route,
    /// Coverage of the routing migration, 0.0 to 1.0 (1.0 when no migration ever ran).
    pub progress: f64,
    /// Why queries go to `query_model`; in each query's answer, not in `GET /v1/routing`.
    #[serde(skip)]
    pub query_reason: QueryReason,
    /// The other model, and its side, whose index can answer a query when `query_model`'s
    /// provider fails: the source while migrating and in the rollback window (it is always
    /// written and complete), the target only once its coverage is past the threshold.
    #[serde(skip)]
    pub fallback: Option<(String, Route)>,
    /// The canary share while migrating under the threshold with `canary_percent` set; a
    /// per-query choice, so not in `GET /v1/routing`, which describes the default side.
    #[serde(skip)]
    pub canary: Option<CanaryShare>,
    /// The shadow share while both models are written and searchable (migrating, or in the
    /// rollback window) with `shadow_percent` set; per query, so not in `GET /v1/routing`.
    #[serde(skip)]
    pub shadow: Option<ShadowShare>,
}

/// The sticky canary of a migration under its threshold (API.md `canary_percent`): which keys
/// its target answers for.
#[derive(Debug, Clone, PartialEq)]
pub struct CanaryShare {
    migration_id: String,
    percent: f64,
    target_model: String,
}

/// How one query is served: the model whose index answers, its side and why, and the model
/// whose index may answer instead when that one's provider fails.
#[derive(Debug, Clone, PartialEq)]
pub struct QueryPlan {
    pub model: String,
    pub route: Route,
    pub reason: QueryReason,
    pub fallback: Option<(String, Route)>,
}

impl Routing {
    /// The plan of a query carrying `key`: the target when the key is in the canary share,
    /// with the source (complete and always written) as its fallback, as past the threshold;
    /// otherwise the default side.
    pub fn query_plan(&self, key: Option<&RoutingKey>) -> QueryPlan {
        match &self.canary {
            Some(canary) if is_canary(&canary.migration_id, key, canary.percent) => QueryPlan {
                model: canary.target_model.clone(),
                route: Route::Target,
                reason: QueryReason::Canary,
                fallback: Some((self.query_model.clone(), self.query_route)),
            },
            _ => QueryPlan {
                model: self.query_model.clone(),
                route: self.query_route,
                reason: self.query_reason,
                fallback: self.fallback.clone(),
            },
        }
    }

    /// Whether a write may go ahead without `model` when its embedder fails: only the target of
    /// a dual write while migrating or in the rollback window, because the store then queues
    /// the document and the backfill embeds it before completion (or, in the window, before
    /// the window may end). Every other write model is required.
    pub fn is_best_effort_write(&self, model: &str) -> bool {
        matches!(self.phase, Phase::Migrating | Phase::RollbackWindow)
            && self.write_route == Route::DualWrite
            && self
                .write_models
                .last()
                .is_some_and(|target| target == model)
    }
}

/// Routes for `latest` (the newest migration, if any) at `now`; `active_model` is used only
/// when no migration ever ran, since every migration's source is the model active before it.
pub fn route(active_model: &str, latest: Option<&Migration>, now: DateTime<Utc>) -> Routing {
    let window_open = latest.is_some_and(|m| m.window_open(now));
    decide(active_model, latest, window_open)
}

/// The routing of one state of the newest migration, decided once and shared by every request
/// until the state or counts change. Time matters to the table only when a rollback window
/// closes, so that later routing is decided up front too: `at(now)` equals `route(.., now)`
/// and costs a comparison.
///
/// Generic over what is kept per decision, so a caller can keep each decision together with
/// something derived from it once (`map`), such as its rendering for the API.
#[derive(Debug, Clone)]
pub struct RoutingSnapshot<T = Arc<Routing>> {
    current: T,
    /// When the rollback window closes, and the routing from then on.
    after_window: Option<(DateTime<Utc>, T)>,
}

impl RoutingSnapshot {
    /// Decides the routing of `latest` (see `route`) for any time.
    pub fn new(active_model: &str, latest: Option<&Migration>) -> Self {
        let completed = latest.filter(|m| m.state == MigrationState::Completed);
        let repairs_pending = completed.is_some_and(|m| m.repairs_pending() > 0);
        // While repairs wait, the window stays open whatever the clock says; the snapshot is
        // decided again when they are done (every count change publishes a new one).
        let window_end = completed
            .filter(|_| !repairs_pending)
            .and_then(|m| m.rollback_window_ends_at);
        let window_open = repairs_pending || window_end.is_some();
        Self {
            current: Arc::new(decide(active_model, latest, window_open)),
            after_window: window_end
                .map(|end| (end, Arc::new(decide(active_model, latest, false)))),
        }
    }
}

impl<T> RoutingSnapshot<T> {
    /// The routing at `now`.
    pub fn at(&self, now: DateTime<Utc>) -> &T {
        match &self.after_window {
            Some((end, after)) if now >= *end => after,
            _ => &self.current,
        }
    }

    /// The same snapshot with `derive` applied to each of its decisions, once.
    pub fn map<U>(&self, derive: impl Fn(&T) -> U) -> RoutingSnapshot<U> {
        RoutingSnapshot {
            current: derive(&self.current),
            after_window: self
                .after_window
                .as_ref()
                .map(|(end, after)| (*end, derive(after))),
        }
    }
}

/// The routing table, with the one time-dependent question (is the rollback window open?)
/// already answered.
fn decide(active_model: &str, latest: Option<&Migration>, window_open: bool) -> Routing {
    let Some(m) = latest else {
        return stable(active_model, None, Route::Legacy, 1.0);
    };
    let coverage = m.counts.coverage();
    let id = Some(m.id.clone());
    match m.state {
        MigrationState::InProgress | MigrationState::Paused => migrating(m, coverage),
        MigrationState::Completed if window_open => Routing {
            phase: Phase::RollbackWindow,
            query_model: m.target_model.clone(),
            write_models: vec![m.source_model.clone(), m.target_model.clone()],
            migration_id: id,
            query_route: Route::Target,
            write_route: Route::DualWrite,
            progress: coverage,
            query_reason: QueryReason::RollbackWindow,
            fallback: Some((m.source_model.clone(), Route::Legacy)),
            canary: None,
            shadow: ShadowShare::of(m),
        },
        MigrationState::Completed => stable(&m.target_model, id, Route::Target, coverage),
        MigrationState::RolledBack => Routing {
            query_reason: QueryReason::RolledBack,
            ..stable(&m.source_model, id, Route::Legacy, coverage)
        },
        MigrationState::Planned | MigrationState::Failed | MigrationState::Cancelled => {
            stable(&m.source_model, id, Route::Legacy, coverage)
        }
    }
}

fn stable(model: &str, migration_id: Option<String>, side: Route, progress: f64) -> Routing {
    Routing {
        phase: Phase::Stable,
        query_model: model.to_owned(),
        write_models: vec![model.to_owned()],
        migration_id,
        query_route: side,
        write_route: side,
        progress,
        query_reason: QueryReason::Stable,
        fallback: None,
        canary: None,
        shadow: None,
    }
}

/// In progress or paused: a pause keeps routing where it was (API.md's first departure from
/// lattice-embed), and the threshold compares coverage so skips cannot pin queries to the source.
fn migrating(m: &Migration, coverage: f64) -> Routing {
    let reached = coverage >= m.config.target_query_threshold;
    let on_target = reached && !m.gate_blocks();
    let (query_model, query_route, query_reason, fallback) = if on_target {
        let source = (m.source_model.clone(), Route::Legacy);
        (
            &m.target_model,
            Route::Target,
            QueryReason::ThresholdReached,
            Some(source),
        )
    } else {
        // The target's index lacks too much to answer for the source, or its gate holds it.
        let reason = if reached {
            QueryReason::GateBlocked
        } else {
            QueryReason::BelowThreshold
        };
        (&m.source_model, Route::Legacy, reason, None)
    };
    let (write_models, write_route) = if m.config.dual_write {
        (
            vec![m.source_model.clone(), m.target_model.clone()],
            Route::DualWrite,
        )
    } else {
        (vec![m.source_model.clone()], Route::Legacy)
    };
    Routing {
        phase: Phase::Migrating,
        query_model: query_model.clone(),
        write_models,
        migration_id: Some(m.id.clone()),
        query_route,
        write_route,
        progress: coverage,
        query_reason,
        fallback,
        canary: canary_share(m, on_target),
        shadow: ShadowShare::of(m),
    }
}

/// The canary share of a running migration: only under the threshold (past it every query
/// is on the target already) and only when `canary_percent` is set.
fn canary_share(m: &Migration, on_target: bool) -> Option<CanaryShare> {
    (!on_target && m.config.canary_percent > 0.0).then(|| CanaryShare {
        migration_id: m.id.clone(),
        percent: m.config.canary_percent,
        target_model: m.target_model.clone(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::domain::config::BackfillConfig;
    use crate::domain::migration::{Counts, Event};
    use MigrationState::*;

    const SRC: &str = "hash-v1";
    const TGT: &str = "hash-v2";
    const WINDOW_END: i64 = 1000;

    fn at(secs: i64) -> DateTime<Utc> {
        DateTime::from_timestamp(1_700_000_000 + secs, 0).unwrap()
    }

    /// A migration in `state` with `processed` of `total` documents embedded (none skipped);
    /// a completed one completed at 0 with its window ending at `WINDOW_END`.
    fn migration(state: MigrationState, dual_write: bool, processed: u64, total: u64) -> Migration {
        let config = BackfillConfig {
            dual_write,
            target_query_threshold: 0.8,
            rollback_window_secs: WINDOW_END as u64,
            ..BackfillConfig::default()
        };
        let mut m = Migration::plan("mig-7".into(), SRC.into(), TGT.into(), config, at(-10));
        m.state = state;
        m.counts = Counts {
            total,
            processed,
            skipped: 0,
            failed: 0,
            truncated: 0,
            tokens_embedded: 0,
        };
        if state == Completed {
            m.completed_at = Some(at(0));
            m.rollback_window_ends_at = Some(at(WINDOW_END));
        }
        m
    }

    fn routing(
        phase: Phase,
        query: (&str, Route),
        writes: (&[&str], Route),
        migration_id: Option<&str>,
        progress: f64,
    ) -> Routing {
        Routing {
            phase,
            query_model: query.0.into(),
            write_models: writes.0.iter().map(|s| s.to_string()).collect(),
            migration_id: migration_id.map(Into::into),
            query_route: query.1,
            write_route: writes.1,
            progress,
            query_reason: QueryReason::Stable,
            fallback: None,
            canary: None,
            shadow: None,
        }
    }

    /// The decision without its query plan (reason, fallback and canary), which
    /// `every_query_reason_and_fallback` and the canary tests cover.
    fn without_query_plan(routing: Routing) -> Routing {
        Routing {
            query_reason: QueryReason::Stable,
            fallback: None,
            canary: None,
            shadow: None,
            ..routing
        }
    }

    /// Shadow reads run while both models are written and searchable, and only with a share.
    #[test]
    fn a_migration_shadows_while_migrating_or_in_its_window() {
        let shadowing = |state, percent, secs| {
            let mut m = migration(state, true, 10, 10);
            m.config.shadow_percent = percent;
            route(SRC, Some(&m), at(secs)).shadow.is_some()
        };
        assert!(shadowing(InProgress, 10.0, 0));
        assert!(shadowing(Paused, 10.0, 0));
        assert!(shadowing(Completed, 10.0, 0), "inside the window");
        assert!(!shadowing(Completed, 10.0, WINDOW_END), "the window ended");
        assert!(!shadowing(InProgress, 0.0, 0), "no share");
        for state in [Planned, Failed, Cancelled, RolledBack] {
            assert!(!shadowing(state, 100.0, 0), "{state}");
        }
    }

    /// API.md's routing table, one case per row and per variant the row names.
    #[test]
    fn every_row_of_the_routing_table() {
        use Phase::{Migrating, RollbackWindow, Stable};
        use Route::{DualWrite, Legacy, Target};
        let id = Some("mig-7");
        let stable_source = |p| routing(Stable, (SRC, Legacy), (&[SRC], Legacy), id, p);
        let mut cases: Vec<(String, Option<Migration>, i64, Routing)> = vec![
            (
                "none: the active model".into(),
                None,
                0,
                routing(
                    Stable,
                    ("hash-v0", Legacy),
                    (&["hash-v0"], Legacy),
                    None,
                    1.0,
                ),
            ),
            (
                "planned".into(),
                Some(migration(Planned, true, 0, 10)),
                0,
                stable_source(0.0),
            ),
            (
                "failed".into(),
                Some(migration(Failed, true, 5, 10)),
                0,
                stable_source(0.5),
            ),
            (
                "cancelled".into(),
                Some(migration(Cancelled, true, 9, 10)),
                0,
                stable_source(0.9),
            ),
            (
                "rolled_back".into(),
                Some(migration(RolledBack, true, 10, 10)),
                0,
                stable_source(1.0),
            ),
        ];
        // in_progress or paused: (dual_write, processed of 10 at threshold 0.8, query, writes)
        let dual: (&[&str], Route) = (&[SRC, TGT], DualWrite);
        let single: (&[&str], Route) = (&[SRC], Legacy);
        let migrating_rows = [
            (true, 7, (SRC, Legacy), dual),
            (true, 8, (TGT, Target), dual),
            (true, 9, (TGT, Target), dual),
            (false, 7, (SRC, Legacy), single),
            (false, 8, (TGT, Target), single),
            (false, 9, (TGT, Target), single),
        ];
        for state in [InProgress, Paused] {
            for (dual_write, processed, query, writes) in migrating_rows {
                cases.push((
                    format!("{state}, dual_write = {dual_write}, {processed} of 10"),
                    Some(migration(state, dual_write, processed, 10)),
                    0,
                    routing(Migrating, query, writes, id, processed as f64 / 10.0),
                ));
            }
        }
        let completed = migration(Completed, true, 10, 10);
        let finalized = completed.apply(Event::Finalize, at(5)).unwrap();
        cases.extend([
            (
                "completed, window open".into(),
                Some(completed.clone()),
                WINDOW_END - 1,
                routing(
                    RollbackWindow,
                    (TGT, Target),
                    (&[SRC, TGT], DualWrite),
                    id,
                    1.0,
                ),
            ),
            (
                "completed, window elapsed".into(),
                Some(completed),
                WINDOW_END,
                routing(Stable, (TGT, Target), (&[TGT], Target), id, 1.0),
            ),
            (
                "completed, finalized".into(),
                Some(finalized),
                5,
                routing(Stable, (TGT, Target), (&[TGT], Target), id, 1.0),
            ),
        ]);
        assert_eq!(cases.len(), 5 + 12 + 3);
        for (name, m, now, expected) in cases {
            let decided = without_query_plan(route("hash-v0", m.as_ref(), at(now)));
            assert_eq!(decided, expected, "{name}");
        }
    }

    /// API.md's query `reason` per row, and which model may answer when the routed one's
    /// provider fails: the source whenever the target answers before cut-over, never the
    /// target below the threshold.
    #[test]
    fn every_query_reason_and_fallback() {
        use QueryReason::{BelowThreshold, RollbackWindow, Stable, ThresholdReached};
        let src = Some((SRC.to_owned(), Route::Legacy));
        let completed = migration(Completed, true, 10, 10);
        let cases = [
            (None, 0, Stable, None),
            (Some(migration(Planned, true, 0, 10)), 0, Stable, None),
            (Some(migration(Failed, true, 5, 10)), 0, Stable, None),
            (Some(migration(Cancelled, true, 9, 10)), 0, Stable, None),
            (
                Some(migration(RolledBack, true, 10, 10)),
                0,
                QueryReason::RolledBack,
                None,
            ),
            (
                Some(migration(InProgress, true, 7, 10)),
                0,
                BelowThreshold,
                None,
            ),
            (
                Some(migration(InProgress, false, 8, 10)),
                0,
                ThresholdReached,
                src.clone(),
            ),
            (
                Some(migration(Paused, true, 9, 10)),
                0,
                ThresholdReached,
                src.clone(),
            ),
            (Some(completed.clone()), WINDOW_END - 1, RollbackWindow, src),
            (Some(completed), WINDOW_END, Stable, None),
        ];
        for (m, now, reason, fallback) in cases {
            let r = route(SRC, m.as_ref(), at(now));
            let state = m.map(|m| m.state);
            assert_eq!(
                (r.query_reason, r.fallback),
                (reason, fallback),
                "{state:?}"
            );
        }
    }

    fn with_canary(mut m: Migration, percent: f64) -> Migration {
        m.config.canary_percent = percent;
        m
    }

    fn key(key: &str) -> RoutingKey {
        RoutingKey::parse(key.into()).unwrap().expect("a key")
    }

    /// At 100% every keyed query is a canary wherever the canary applies: in progress or
    /// paused under the threshold. Everywhere else the key changes nothing.
    #[test]
    fn the_canary_applies_only_while_migrating_under_the_threshold() {
        use QueryReason::{BelowThreshold, RollbackWindow, Stable, ThresholdReached};
        let completed = migration(Completed, true, 10, 10);
        let canary = QueryPlan {
            model: TGT.into(),
            route: Route::Target,
            reason: QueryReason::Canary,
            fallback: Some((SRC.into(), Route::Legacy)),
        };
        let cases = [
            (migration(InProgress, true, 7, 10), 0, canary.reason),
            (migration(Paused, false, 0, 10), 0, canary.reason),
            (migration(InProgress, true, 8, 10), 0, ThresholdReached),
            (migration(Paused, true, 10, 10), 0, ThresholdReached),
            (migration(Planned, true, 0, 10), 0, Stable),
            (migration(Failed, true, 5, 10), 0, Stable),
            (migration(Cancelled, true, 5, 10), 0, Stable),
            (
                migration(RolledBack, true, 10, 10),
                0,
                QueryReason::RolledBack,
            ),
            (completed.clone(), WINDOW_END - 1, RollbackWindow),
            (completed, WINDOW_END, Stable),
        ];
        for (m, now, reason) in cases {
            let r = route(SRC, Some(&with_canary(m.clone(), 100.0)), at(now));
            let plan = r.query_plan(Some(&key("tenant-1")));
            assert_eq!(plan.reason, reason, "{:?} {:?}", m.state, m.counts);
            if reason == QueryReason::Canary {
                assert_eq!(plan, canary);
            } else {
                assert_eq!(
                    plan,
                    r.query_plan(None),
                    "{:?}: the key changes nothing",
                    m.state
                );
            }
            let without = route(SRC, Some(&m), at(now)).query_plan(Some(&key("tenant-1")));
            let expected = if reason == QueryReason::Canary {
                BelowThreshold
            } else {
                reason
            };
            assert_eq!(without.reason, expected, "{:?} without a canary", m.state);
        }
    }

    #[test]
    fn a_query_without_a_key_keeps_the_default_side() {
        let r = route(
            SRC,
            Some(&with_canary(migration(InProgress, true, 0, 10), 100.0)),
            at(0),
        );
        let plan = r.query_plan(None);
        assert_eq!(
            (plan.model.as_str(), plan.route, plan.reason, plan.fallback),
            (SRC, Route::Legacy, QueryReason::BelowThreshold, None)
        );
    }

    #[test]
    fn the_canary_is_not_part_of_the_routing_resource() {
        let r = route(
            SRC,
            Some(&with_canary(migration(InProgress, true, 0, 10), 50.0)),
            at(0),
        );
        assert!(r.canary.is_some());
        let json = serde_json::to_value(&r).unwrap();
        assert_eq!(json["query_route"], "legacy");
        assert!(json.get("canary").is_none(), "{json}");
        assert_eq!(serde_json::to_value(QueryReason::Canary).unwrap(), "canary");
    }

    fn in_progress(threshold: f64, total: u64, processed: u64, skipped: u64) -> Migration {
        let mut m = migration(InProgress, true, processed, total);
        m.config.target_query_threshold = threshold;
        m.counts.skipped = skipped;
        m
    }

    fn query_route(m: &Migration) -> Route {
        route(SRC, Some(m), at(0)).query_route
    }

    #[test]
    fn coverage_equal_to_the_threshold_routes_queries_to_the_target() {
        // Each coverage is computed as processed / (total - skipped) and equals the threshold.
        let cases = [
            (0.8, 10, 8, 0),
            (0.9, 10, 9, 0),
            (0.7, 20, 7, 10),
            (0.5, 4, 1, 2),
        ];
        for (threshold, total, processed, skipped) in cases {
            let m = in_progress(threshold, total, processed, skipped);
            assert_eq!(m.counts.coverage(), threshold);
            assert_eq!(query_route(&m), Route::Target, "{:?}", m.counts);
            let r = route(SRC, Some(&m), at(0));
            assert_eq!(r.query_model, TGT);
        }
    }

    #[test]
    fn a_zero_threshold_routes_to_the_target_with_nothing_processed() {
        let m = in_progress(0.0, 1000, 0, 0);
        let r = route(SRC, Some(&m), at(0));
        assert_eq!(
            (r.query_route, r.query_model.as_str(), r.progress),
            (Route::Target, TGT, 0.0)
        );
    }

    #[test]
    fn a_threshold_of_one_stays_on_the_source_until_full_coverage() {
        for (processed, expected) in [
            (0, Route::Legacy),
            (999, Route::Legacy),
            (1000, Route::Target),
        ] {
            let m = in_progress(1.0, 1000, processed, 0);
            assert_eq!(query_route(&m), expected, "{processed} of 1000");
        }
        // Skips complete the coverage too: 990 embedded + 10 skipped of 1000.
        assert_eq!(query_route(&in_progress(1.0, 1000, 990, 10)), Route::Target);
    }

    #[test]
    fn skips_count_toward_coverage_not_against_it() {
        // processed / total = 0.4, but processed / (total - skipped) = 0.8.
        let m = in_progress(0.8, 10, 4, 5);
        let r = route(SRC, Some(&m), at(0));
        assert_eq!(r.progress, 0.8);
        assert_eq!(r.query_route, Route::Target);
        // One fewer skip and the same processed count stays on the source.
        assert_eq!(query_route(&in_progress(0.8, 10, 4, 4)), Route::Legacy);
    }

    #[test]
    fn progress_is_one_when_nothing_is_left_to_embed() {
        for (total, skipped) in [(0, 0), (5, 5)] {
            let m = in_progress(1.0, total, 0, skipped);
            let r = route(SRC, Some(&m), at(0));
            assert_eq!(r.progress, 1.0, "total {total}, skipped {skipped}");
            assert_eq!(r.query_route, Route::Target);
        }
    }

    #[test]
    fn a_pause_keeps_queries_where_they_were() {
        for processed in [0, 7, 8, 10] {
            let running = migration(InProgress, true, processed, 10);
            let paused = running.apply(Event::Pause { reason: None }, at(0)).unwrap();
            let mut before = route(SRC, Some(&running), at(0));
            let after = route(SRC, Some(&paused), at(0));
            before.phase = after.phase;
            assert_eq!(before, after, "{processed} of 10");
        }
    }

    #[test]
    fn with_a_migration_the_models_come_from_it_not_from_the_active_argument() {
        for state in MigrationState::ALL {
            let m = migration(state, true, 10, 10);
            let r = route("some-other-model", Some(&m), at(0));
            assert!(
                r.write_models.iter().all(|w| w == SRC || w == TGT),
                "{state}: {r:?}"
            );
            assert!(
                r.query_model == SRC || r.query_model == TGT,
                "{state}: {r:?}"
            );
            assert_eq!(r.migration_id.as_deref(), Some("mig-7"));
        }
    }

    #[test]
    fn routes_and_phases_serialize_in_snake_case() {
        let r = route(SRC, Some(&migration(Completed, true, 10, 10)), at(0));
        let json = serde_json::to_value(&r).unwrap();
        assert_eq!(
            json,
            serde_json::json!({
                "phase": "rollback_window",
                "query_model": TGT,
                "write_models": [SRC, TGT],
                "migration_id": "mig-7",
                "query_route": "target",
                "write_route": "dual_write",
                "progress": 1.0
            })
        );
        assert_eq!(serde_json::to_value(Route::Legacy).unwrap(), "legacy");
        assert_eq!(serde_json::to_value(Phase::Stable).unwrap(), "stable");
        assert_eq!(serde_json::to_value(Phase::Migrating).unwrap(), "migrating");
    }
}
