use super::*;

const BUDGET: Duration = Duration::from_millis(250);

fn ms(n: u64) -> Duration {
    Duration::from_millis(n)
}

fn bounds(max_concurrent: u32, batch_size: u32) -> Bounds {
    Bounds {
        max_concurrent,
        batch_size,
    }
}

/// A FIFO provider with one worker serving `per_input` per input: the latency of a backfill
/// request when `concurrency` batches of `batch` inputs are queued at once.
fn fifo_latency(limits: BackfillLimits, per_input: Duration, max_batch: u32) -> Duration {
    let per_request = limits.batch_size.min(max_batch);
    per_input * per_request * limits.concurrency
}

/// Drives the controller against that provider for `rounds` backfill answers, one every
/// latency (or 10 ms, a round trip and a commit), and returns the limits after them.
fn settle(
    controller: &mut Controller,
    bounds: Bounds,
    per_input: Duration,
    max_batch: u32,
    rounds: usize,
) -> BackfillLimits {
    let mut now = Instant::now();
    for _ in 0..rounds {
        let latency = fifo_latency(controller.limits(bounds), per_input, max_batch);
        now += latency.max(ms(10));
        controller.observe_backfill(latency, now);
    }
    controller.limits(bounds)
}

#[test]
fn nothing_changes_before_the_bounds_are_known() {
    let mut controller = Controller::new(BUDGET, 256);
    controller.observe_backfill(ms(1), Instant::now());
    let limits = controller.limits(bounds(4, 256));
    assert_eq!((limits.concurrency, limits.batch_size), (1, START_BATCH));
}

#[test]
fn it_starts_with_one_small_batch_in_flight() {
    let mut controller = Controller::new(BUDGET, 256);
    let limits = controller.limits(bounds(4, 256));
    assert_eq!((limits.concurrency, limits.batch_size), (1, START_BATCH));
    assert_eq!(limits.reason, Some(ThrottleReason::Probing));
    let tiny = controller.limits(bounds(4, 2));
    assert_eq!(tiny.batch_size, 2, "the bounds stay the upper bounds");
}

#[test]
fn a_fast_provider_grows_to_the_configured_bounds() {
    let mut controller = Controller::new(BUDGET, 32);
    let limits = settle(
        &mut controller,
        bounds(4, 100),
        Duration::from_micros(100),
        32,
        50,
    );
    assert_eq!(limits, BackfillLimits::at(bounds(4, 100)));
}

#[test]
fn a_slow_fifo_provider_keeps_one_backfill_request_within_the_budget() {
    // 40 ms per input, like all-MiniLM-L6-v2 on two CPU cores: at most 6 inputs fit 250 ms.
    let per_input = ms(40);
    for (max_concurrent, batch_size, max_batch) in [(4, 100, 32), (4, 256, 256)] {
        let mut controller = Controller::new(BUDGET, max_batch);
        let b = bounds(max_concurrent, batch_size);
        let limits = settle(&mut controller, b, per_input, max_batch, 200);
        let in_flight = fifo_latency(limits, per_input, max_batch);
        assert!(in_flight <= BUDGET, "{limits:?} queues {in_flight:?}");
        assert!(in_flight >= BUDGET / 3, "{limits:?} wastes the provider");
        assert!(limits.concurrency <= PIPELINE, "{limits:?}");
        assert!(limits.reason.is_some(), "{limits:?}");
    }
}

#[test]
fn interactive_latency_over_the_budget_backs_off_and_growing_resumes_when_it_falls() {
    let b = bounds(4, 100);
    let mut controller = Controller::new(BUDGET, 100);
    settle(&mut controller, b, Duration::from_micros(10), 100, 50);
    assert_eq!(controller.limits(b), BackfillLimits::at(b));

    // A provider serving requests in parallel: the backfill's own latency is fine, but live
    // queries now wait 600 ms over the 10 ms they take alone.
    let mut now = Instant::now() + Duration::from_secs(1);
    controller.observe_interactive(1, ms(10), now);
    for _ in 0..5 {
        now += ms(100);
        controller.observe_interactive(1, ms(610), now);
    }
    now += ms(100);
    controller.observe_backfill(ms(100), now);
    let backed_off = controller.limits(b);
    assert_eq!(backed_off.concurrency, PIPELINE, "{backed_off:?}");
    assert_eq!(backed_off.reason, Some(ThrottleReason::InteractiveLatency));

    // The excess falls away: it grows back to the bounds.
    for _ in 0..20 {
        now += ms(200);
        controller.observe_interactive(1, ms(12), now);
        controller.observe_backfill(ms(100), now);
    }
    assert_eq!(controller.limits(b), BackfillLimits::at(b));
}

#[test]
fn a_fast_fifo_provider_gets_two_batches_in_flight_within_the_budget() {
    // 5 ms per input: two batches of about 20 keep the provider busy within 250 ms.
    let per_input = ms(5);
    let mut controller = Controller::new(BUDGET, 256);
    let b = bounds(4, 256);
    let limits = settle(&mut controller, b, per_input, 256, 200);
    assert_eq!(limits.concurrency, PIPELINE, "{limits:?}");
    let in_flight = fifo_latency(limits, per_input, 256);
    assert!(
        (BUDGET / 2..=BUDGET).contains(&in_flight),
        "{limits:?}: {in_flight:?}"
    );
}

#[test]
fn bulk_interactive_requests_are_not_a_latency_signal() {
    let mut controller = Controller::new(BUDGET, 100);
    let now = Instant::now();
    for i in 0..10 {
        controller.observe_interactive(1_000, ms(5_000), now + ms(i));
    }
    assert_eq!(controller.interactive_excess(now + ms(10)), None);
}

#[test]
fn a_change_waits_for_a_request_sent_after_it() {
    let b = bounds(4, 100);
    let mut controller = Controller::new(BUDGET, 100);
    let now = Instant::now();
    let start = controller.limits(b);
    controller.observe_backfill(ms(10), now);
    let grown = controller.limits(b);
    assert_eq!(
        grown.concurrency,
        start.concurrency + 1,
        "a second batch first"
    );
    controller.observe_backfill(ms(10), now + ms(1));
    assert_eq!(
        controller.limits(b),
        grown,
        "an answer sent before the change"
    );
    controller.observe_backfill(ms(10), now + MIN_SETTLE);
    assert!(controller.limits(b).batch_size > grown.batch_size);
}

#[test]
fn a_patch_that_lowers_the_bounds_applies_at_once() {
    let mut controller = Controller::new(BUDGET, 100);
    settle(
        &mut controller,
        bounds(8, 500),
        Duration::from_micros(10),
        100,
        80,
    );
    let lowered = controller.limits(bounds(2, 50));
    assert_eq!(lowered, BackfillLimits::at(bounds(2, 50)));
}
