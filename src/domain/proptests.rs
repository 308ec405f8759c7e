//! Properties of the lifecycle and the routing table over random histories, complementing the
//! row-by-row unit tests in each module.

use chrono::{DateTime, Duration, Utc};
use proptest::prelude::*;

use super::canary::RoutingKey;
use super::config::{BackfillConfig, MAX_ROLLBACK_WINDOW_SECS};
use super::migration::{Counts, Event, Migration, MigrationState};
use super::routing::{Phase, QueryReason, Route, RoutingSnapshot, route};

fn t0() -> DateTime<Utc> {
    DateTime::from_timestamp(1_700_000_000, 0).unwrap()
}

fn any_event() -> impl Strategy<Value = Event> {
    prop_oneof![
        Just(Event::Start),
        proptest::option::of(".{0,8}").prop_map(|reason| Event::Pause { reason }),
        Just(Event::Resume),
        Just(Event::Cancel),
        Just(Event::Rollback),
        Just(Event::Finalize),
        Just(Event::Complete),
        ".{0,8}".prop_map(|error| Event::Fail { error }),
        valid_config().prop_map(|config| Event::Reconfigure { config }),
        Just(Event::RetrySkips),
    ]
}

fn any_state() -> impl Strategy<Value = MigrationState> {
    proptest::sample::select(MigrationState::ALL.to_vec())
}

/// Any instant chrono can represent, with its extremes and ordinary times well represented.
fn any_time() -> impl Strategy<Value = DateTime<Utc>> {
    let (min, max) = (DateTime::<Utc>::MIN_UTC, DateTime::<Utc>::MAX_UTC);
    prop_oneof![
        Just(min),
        Just(max),
        (min.timestamp()..=max.timestamp(), 0..1_000_000_000u32)
            .prop_map(|(secs, nanos)| DateTime::from_timestamp(secs, nanos).unwrap()),
        (-100_000i64..100_000).prop_map(|secs| t0() + Duration::seconds(secs)),
    ]
}

/// A config as the validation in `config.rs` admits it.
fn valid_config() -> impl Strategy<Value = BackfillConfig> {
    (
        1..=10_000u32,
        1..=64u32,
        any::<bool>(),
        0.0..=1.0f64,
        prop_oneof![Just(0u64), 0..=7200u64, 0..=MAX_ROLLBACK_WINDOW_SECS as u64],
        prop_oneof![Just(0.0), 0.0..=100.0f64],
        prop_oneof![Just(0.0), 0.0..=100.0f64],
    )
        .prop_map(
            |(batch_size, max_concurrent, dual_write, threshold, window, canary, shadow)| {
                BackfillConfig {
                    batch_size,
                    max_concurrent,
                    dual_write,
                    target_query_threshold: threshold,
                    rollback_window_secs: window,
                    canary_percent: canary,
                    shadow_percent: shadow,
                    cutover_gate: None,
                    max_cost: None,
                    retain_source_vectors: false,
                }
            },
        )
}

/// One step of a history: time passes, the backfill moves the counts (if it runs), then an
/// event arrives.
#[derive(Debug, Clone)]
struct Step {
    elapsed_secs: i64,
    queued: u64,
    processed: u64,
    skipped: u64,
    event: Event,
}

fn step() -> impl Strategy<Value = Step> {
    (0..2000i64, 0..4u64, 0..12u64, 0..3u64, any_event()).prop_map(
        |(elapsed_secs, queued, processed, skipped, event)| Step {
            elapsed_secs,
            queued,
            processed,
            skipped,
            event,
        },
    )
}

fn planned(config: BackfillConfig, total: u64) -> Migration {
    let mut m = Migration::plan(
        "mig".into(),
        "hash-v1".into(),
        "hash-v2".into(),
        config,
        t0(),
    );
    m.counts.total = total;
    m
}

/// Moves counts the way the backfill may: only while it runs, `processed` and `skipped` only
/// grow, and never past `total`.
fn advance_counts(counts: &mut Counts, step: &Step) {
    counts.total += step.queued;
    counts.processed += step.processed.min(counts.remaining());
    counts.skipped += step.skipped.min(counts.remaining());
}

fn is_terminal(state: MigrationState) -> bool {
    matches!(
        state,
        MigrationState::Completed | MigrationState::Cancelled | MigrationState::RolledBack
    )
}

/// Plays `steps` from `start`, checking the count invariants after every step; returns the
/// final migration and clock.
fn play(start: Migration, steps: &[Step]) -> Result<(Migration, DateTime<Utc>), TestCaseError> {
    let (mut m, mut now) = (start, t0());
    for step in steps {
        now += Duration::seconds(step.elapsed_secs);
        let before = m.counts;
        if m.state.is_backfilling() {
            advance_counts(&mut m.counts, step);
        }
        let was = m.state;
        if let Ok(next) = m.apply(step.event.clone(), now) {
            prop_assert_eq!(next.counts, m.counts, "apply changed counts");
            if next.state == MigrationState::Completed && was != MigrationState::Completed {
                prop_assert!(m.counts.is_done(), "completed with {:?}", m.counts);
                prop_assert_eq!(next.completed_at, Some(now));
            }
            m = next;
        }
        let c = m.counts;
        prop_assert!(c.total >= before.total && c.processed >= before.processed);
        prop_assert!(c.skipped >= before.skipped && c.failed >= before.failed);
        prop_assert!(c.processed + c.skipped <= c.total);
        if m.state == MigrationState::Completed {
            prop_assert!(c.processed <= c.total - c.skipped);
            prop_assert_eq!(c.processed + c.skipped, c.total, "API.md: at completion");
            prop_assert!(m.rollback_window_ends_at >= m.completed_at);
        }
    }
    Ok((m, now))
}

/// The calls that end a history: complete, cancel or rollback.
#[derive(Debug, Clone, Copy)]
enum Ending {
    Complete,
    Cancel,
    Rollback,
}

/// Drives `m` by legal events into a terminal state, by `ending` unless it is already there.
fn terminate(mut m: Migration, ending: Ending, now: DateTime<Utc>) -> Migration {
    use MigrationState::*;
    let apply = |m: &Migration, event: Event| {
        m.apply(event.clone(), now)
            .unwrap_or_else(|e| panic!("terminating with {event:?}: {e}"))
    };
    if is_terminal(m.state) {
        return m;
    }
    match ending {
        Ending::Cancel => apply(&m, Event::Cancel),
        Ending::Rollback | Ending::Complete if m.state == Planned => {
            let started = apply(&m, Event::Start);
            terminate(started, ending, now)
        }
        Ending::Rollback => apply(&m, Event::Rollback),
        Ending::Complete => {
            if m.state != InProgress {
                m = apply(&m, Event::Resume);
            }
            m.counts.processed = m.counts.total - m.counts.skipped;
            apply(&m, Event::Complete)
        }
    }
}

proptest! {
    /// (1) Counts never run backwards, and a completed migration has processed + skipped =
    /// total, whatever the order of events.
    #[test]
    fn counts_stay_consistent_over_any_history(
        config in valid_config(),
        total in 0..50u64,
        steps in proptest::collection::vec(step(), 0..60),
    ) {
        play(planned(config, total), &steps)?;
    }

    /// (2) `apply` is total: any event, in any state, with any counts, config, timestamps
    /// and clock, returns a value instead of panicking.
    #[test]
    fn apply_never_panics(
        state in any_state(),
        event in any_event(),
        now in any_time(),
        ends_at in proptest::option::of(any_time()),
        counts in any::<(u64, u64, u64, u64)>(),
        config in valid_config(),
        any_window in any::<u64>(),
        use_any_window in any::<bool>(),
    ) {
        let mut m = planned(config, 0);
        m.state = state;
        m.rollback_window_ends_at = ends_at;
        m.counts = Counts {
            total: counts.0,
            processed: counts.1,
            skipped: counts.2,
            failed: counts.3,
            truncated: counts.1 / 2,
            tokens_embedded: counts.1.saturating_mul(3),
        };
        if use_any_window {
            m.config.rollback_window_secs = any_window;
        }
        let name = event.name();
        match m.apply(event, now) {
            Ok(next) => prop_assert_eq!(next.counts, m.counts),
            Err(err) => prop_assert_eq!((err.event, err.state), (name, state)),
        }
        let _ = (m.window_open(now), m.is_open(now), m.is_cut_over(now));
        let _ = route("hash-v1", Some(&m), now);
    }

    /// (3) While a migration runs, more coverage never sends queries back to the source.
    #[test]
    fn query_route_is_monotone_in_coverage(
        config in valid_config(),
        paused in any::<bool>(),
        a in (0..1000u64, 0..1000u64, 0..1000u64),
        b in (0..1000u64, 0..1000u64, 0..1000u64),
    ) {
        let counts = |(total, processed, skipped): (u64, u64, u64)| {
            let skipped = skipped.min(total);
            Counts { total, processed: processed.min(total - skipped), skipped, failed: 0, truncated: 0, tokens_embedded: 0 }
        };
        let (mut low, mut high) = (counts(a), counts(b));
        if low.coverage() > high.coverage() {
            std::mem::swap(&mut low, &mut high);
        }
        let mut m = planned(config, 0);
        m.state = if paused { MigrationState::Paused } else { MigrationState::InProgress };
        let route_at = |counts: Counts| {
            let mut m = m.clone();
            m.counts = counts;
            route("hash-v1", Some(&m), t0())
        };
        let (r_low, r_high) = (route_at(low), route_at(high));
        if r_low.query_route == Route::Target {
            prop_assert_eq!(r_high.query_route, Route::Target, "{:?} vs {:?}", low, high);
            prop_assert_eq!(r_high.query_model, "hash-v2");
        }
        // The same holds along one migration's own history: more processed, same rest.
        let mut more = low;
        more.processed = (low.processed + 1).min(low.total - low.skipped);
        if r_low.query_route == Route::Target {
            prop_assert_eq!(route_at(more).query_route, Route::Target);
        }
    }

    /// (4) Completed, cancelled and rolled back accept nothing more, except rollback or
    /// finalize of a completed migration inside its window.
    #[test]
    fn terminal_states_accept_only_rollback_or_finalize_inside_the_window(
        config in valid_config(),
        total in 0..30u64,
        prefix in proptest::collection::vec(step(), 0..20),
        ending in prop_oneof![Just(Ending::Complete), Just(Ending::Cancel), Just(Ending::Rollback)],
        later in proptest::collection::vec(
            (prop_oneof![0..10i64, 0..100_000i64], any_event()),
            1..20,
        ),
    ) {
        let (m, now) = play(planned(config, total), &prefix)?;
        let mut m = terminate(m, ending, now);
        let mut now = now;
        prop_assert!(is_terminal(m.state));
        for (elapsed, event) in later {
            now += Duration::seconds(elapsed);
            let may = m.state == MigrationState::Completed
                && m.window_open(now)
                && matches!(event, Event::Rollback | Event::Finalize);
            let name = event.name();
            match m.apply(event, now) {
                Ok(next) => {
                    prop_assert!(may, "{} accepted in {} at {}", name, m.state, now);
                    prop_assert!(is_terminal(next.state));
                    m = next;
                }
                Err(err) => {
                    prop_assert!(!may, "{} refused in {} inside the window", name, m.state);
                    prop_assert_eq!(err.state, m.state);
                }
            }
        }
    }

    /// (5) The snapshot every request reads answers exactly as the routing table would at
    /// any time: before, at and after the end of a rollback window, in any state.
    #[test]
    fn routing_snapshot_agrees_with_the_table_at_any_time(
        state in any_state(),
        ends_at in proptest::option::of(any_time()),
        counts in (0..1000u64, 0..1000u64, 0..1000u64),
        config in valid_config(),
        no_migration in any::<bool>(),
        times in proptest::collection::vec(any_time(), 1..8),
    ) {
        let mut m = planned(config, counts.0);
        m.state = state;
        m.rollback_window_ends_at = ends_at;
        m.counts.processed = counts.1.min(counts.0);
        m.counts.skipped = counts.2.min(counts.0 - m.counts.processed);
        let latest = (!no_migration).then_some(&m);
        let snapshot = RoutingSnapshot::new("hash-v0", latest);
        let mut times = times;
        times.extend(ends_at);
        for now in times {
            prop_assert_eq!(&**snapshot.at(now), &route("hash-v0", latest, now), "at {}", now);
        }
    }

    /// (6) A key moves a query only from the source to the target of a migration running
    /// under its threshold; in every other case it gets the default side.
    #[test]
    fn a_key_moves_a_query_only_as_a_canary_before_the_threshold(
        state in any_state(),
        counts in (0..1000u64, 0..1000u64),
        config in valid_config(),
        key in proptest::option::of(".{1,32}"),
    ) {
        let mut m = planned(config, counts.0);
        m.state = state;
        m.counts.processed = counts.1.min(counts.0);
        let r = route("hash-v1", Some(&m), t0());
        let key = key.and_then(|k| RoutingKey::parse(k).unwrap());
        let plan = r.query_plan(key.as_ref());
        if plan.reason == QueryReason::Canary {
            prop_assert!(key.is_some() && r.phase == Phase::Migrating);
            prop_assert_eq!(r.query_reason, QueryReason::BelowThreshold);
            prop_assert_eq!((plan.model.as_str(), plan.route), ("hash-v2", Route::Target));
            prop_assert_eq!(plan.fallback, Some(("hash-v1".to_owned(), Route::Legacy)));
        } else {
            prop_assert_eq!(plan, r.query_plan(None));
        }
    }
}
