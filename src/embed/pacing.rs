//! Client-side pacing of one provider model: budgets of requests and tokens per minute, and a
//! model-wide pause when the provider says it is overloaded.
//!
//! Every caller of a model — write paths, queries, every backfill batch — shares one `Pacer`,
//! so the budgets hold for the process as a whole, and a 429 seen by one batch holds back the
//! others instead of letting them collect 429s of their own.

use std::num::NonZeroU32;
use std::sync::Mutex;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use governor::{DefaultDirectRateLimiter, Quota, RateLimiter};
use tokio::time::Instant;

/// The share of a per-minute budget that may be spent at once: a tenth, i.e. six seconds'
/// worth. Enough to start several batches together without waiting, small enough that a
/// provider enforcing its per-minute limit over shorter windows (OpenAI documents that it
/// may) does not see a whole minute's quota arrive in one second.
const BURST_DIVISOR: u32 = 10;

/// Paces the requests of one model; see the module doc.
pub struct Pacer {
    /// Requests per minute; `None` when unlimited.
    requests: Option<Budget>,
    /// Estimated tokens per minute; `None` when unlimited.
    tokens: Option<Budget>,
    /// No request of this model may start before this instant. Raised by whichever caller
    /// received a 429 or 503, read by every caller before each request. A std `Mutex`: it is
    /// held only to read or raise one value, never across an `.await`.
    paused_until: Mutex<Option<Instant>>,
    /// Time callers spent waiting on budgets, pauses and back-offs, in microseconds, summed
    /// over callers. A statistic only, so `Relaxed` suffices.
    throttled_micros: AtomicU64,
}

/// One per-minute budget: a GCRA limiter and the most it lets through at once.
struct Budget {
    limiter: DefaultDirectRateLimiter,
    burst: NonZeroU32,
}

impl Pacer {
    /// A pacer holding to `requests_per_minute` and `tokens_per_minute`, each when given.
    pub fn new(
        requests_per_minute: Option<NonZeroU32>,
        tokens_per_minute: Option<NonZeroU32>,
    ) -> Self {
        Self {
            requests: requests_per_minute.map(Budget::per_minute),
            tokens: tokens_per_minute.map(Budget::per_minute),
            paused_until: Mutex::new(None),
            throttled_micros: AtomicU64::new(0),
        }
    }

    /// The most requests that may start at once, if requests are limited.
    pub fn request_burst(&self) -> Option<NonZeroU32> {
        self.requests.as_ref().map(|budget| budget.burst)
    }

    /// Waits until a request of `tokens` estimated tokens may start: past any pause, then
    /// within both budgets.
    pub async fn ready(&self, tokens: u32) {
        let started = Instant::now();
        self.wait_out_pause().await;
        if let Some(requests) = &self.requests {
            requests.spend(1).await;
        }
        if let Some(budget) = &self.tokens {
            budget.spend(tokens).await;
        }
        // Another caller may have been told to pause while this one waited on a budget.
        self.wait_out_pause().await;
        self.record(started.elapsed());
    }

    /// Holds back every request of this model for `duration` from now; a pause already
    /// reaching further stays as it is.
    pub fn pause_for(&self, duration: Duration) {
        let until = Instant::now() + duration;
        let mut paused_until = self.lock_pause();
        *paused_until = Some(paused_until.map_or(until, |current| current.max(until)));
    }

    /// Sleeps the calling request's own back-off (a failure that says nothing about the
    /// model's load, such as a 500 or a timeout), counting it as throttled time.
    pub async fn back_off(&self, duration: Duration) {
        tokio::time::sleep(duration).await;
        self.record(duration);
    }

    /// Total time spent waiting so far, summed over callers: two batches held by the same
    /// one-second pause count two seconds.
    pub fn throttled(&self) -> Duration {
        Duration::from_micros(self.throttled_micros.load(Ordering::Relaxed))
    }

    async fn wait_out_pause(&self) {
        // Loops because the pause may be extended while we sleep. The guard is dropped at
        // the end of the `let`, before any `.await`.
        loop {
            let paused_until = *self.lock_pause();
            match paused_until {
                Some(until) if until > Instant::now() => tokio::time::sleep_until(until).await,
                _ => break,
            }
        }
    }

    fn lock_pause(&self) -> std::sync::MutexGuard<'_, Option<Instant>> {
        // The guarded value is a plain instant, valid even if a holder panicked.
        self.paused_until
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    fn record(&self, waited: Duration) {
        let micros = u64::try_from(waited.as_micros()).unwrap_or(u64::MAX);
        self.throttled_micros.fetch_add(micros, Ordering::Relaxed);
    }
}

impl Budget {
    fn per_minute(per_minute: NonZeroU32) -> Self {
        let burst = NonZeroU32::new(per_minute.get() / BURST_DIVISOR).unwrap_or(NonZeroU32::MIN);
        let quota = Quota::per_minute(per_minute).allow_burst(burst);
        Self {
            limiter: RateLimiter::direct(quota),
            burst,
        }
    }

    /// Waits until `cells` fit the budget and spends them. A request larger than the burst is
    /// spent in burst-sized parts, so it still goes out — after waiting as long as its size
    /// warrants — instead of being refused as impossible.
    async fn spend(&self, cells: u32) {
        let mut left = cells;
        while let Some(part) = NonZeroU32::new(left.min(self.burst.get())) {
            // `part` never exceeds the burst, so the limiter's "can never fit" error cannot
            // occur.
            let _ = self.limiter.until_n_ready(part).await;
            left -= part.get();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn per_minute(n: u32) -> Option<NonZeroU32> {
        NonZeroU32::new(n)
    }

    #[test]
    fn burst_is_a_tenth_of_the_minute_and_at_least_one() {
        let burst = |rpm| Pacer::new(per_minute(rpm), None).request_burst();
        assert_eq!(burst(600), per_minute(60));
        assert_eq!(burst(60), per_minute(6));
        assert_eq!(burst(5), per_minute(1));
        assert_eq!(Pacer::new(None, None).request_burst(), None);
    }

    #[tokio::test]
    async fn an_unlimited_pacer_does_not_wait() {
        let pacer = Pacer::new(None, None);
        pacer.ready(u32::MAX).await;
        assert!(pacer.throttled() < Duration::from_millis(50));
    }

    #[tokio::test]
    async fn the_request_budget_lets_the_burst_through_then_paces() {
        // 600 per minute: a burst of 60, then one every 100 ms.
        let pacer = Pacer::new(per_minute(600), None);
        let started = Instant::now();
        for _ in 0..62 {
            pacer.ready(1).await;
        }
        let elapsed = started.elapsed();
        assert!(elapsed >= Duration::from_millis(190), "{elapsed:?}");
        assert!(pacer.throttled() >= Duration::from_millis(190));
    }

    #[tokio::test]
    async fn a_request_larger_than_the_token_burst_waits_for_its_size() {
        // 6000 tokens per minute: a burst of 600, then 100 per second. 700 tokens are the
        // burst plus one second's worth.
        let pacer = Pacer::new(None, per_minute(6_000));
        let started = Instant::now();
        pacer.ready(700).await;
        assert!(started.elapsed() >= Duration::from_millis(950));
    }

    #[tokio::test]
    async fn a_pause_holds_every_caller_and_only_grows() {
        let pacer = Pacer::new(None, None);
        pacer.pause_for(Duration::from_millis(200));
        pacer.pause_for(Duration::from_millis(10));
        let started = Instant::now();
        pacer.ready(1).await;
        assert!(started.elapsed() >= Duration::from_millis(200));
        assert!(pacer.throttled() >= Duration::from_millis(200));
    }

    #[tokio::test]
    async fn back_off_counts_as_throttled() {
        let pacer = Pacer::new(None, None);
        pacer.back_off(Duration::from_millis(30)).await;
        assert_eq!(pacer.throttled(), Duration::from_millis(30));
    }
}
