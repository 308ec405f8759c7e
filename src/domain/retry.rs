//! What to do after a request to an embedding provider failed: give up, or retry after how long.
//!
//! Pure, like the rest of `domain`: the caller passes the wall-clock reading (to read an
//! HTTP-date `Retry-After`) and a random draw (for jitter), so every row of the table below
//! is a deterministic unit test.
//!
//! | failure | decision |
//! |---|---|
//! | 400, 413, 422 | give up: the *input* is refused (`Rejected`); the backfill isolates and skips it |
//! | 401, 403, 404 and every other 4xx | give up: the *provider* refuses us (`Misconfigured`); never skips a document |
//! | 408, 429, 5xx, timeout, connect, broken transport | retry after max(`Retry-After`, jittered back-off) |
//! | a retryable failure on the last attempt, or a `Retry-After` longer than we hold a batch for | `Exhausted` |
//!
//! A 404 is deliberately a configuration error rather than a rejected input: a wrong
//! `base_url` or model name answers 404 to every text, and treating that as "this text is bad"
//! would skip the whole corpus.

use std::time::Duration;

use chrono::{DateTime, NaiveDateTime, Utc};

/// What went wrong with one request to a provider.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ProviderFailure {
    /// The provider answered with this non-success HTTP status.
    Status(u16),
    /// No complete answer within the request timeout.
    Timeout,
    /// No connection could be established.
    Connect,
    /// The connection broke mid-request or mid-answer (a reset, a truncated body).
    Transport,
}

impl ProviderFailure {
    /// Whether the provider says it is overloaded (429, 503): a signal for the whole model to
    /// slow down, not only the request that received it.
    pub fn is_overload(self) -> bool {
        matches!(self, Self::Status(429 | 503))
    }
}

/// Why a failure is not worth retrying.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Permanent {
    /// The input itself is refused (too long, invalid): the same text fails the same way.
    Rejected,
    /// The provider refuses us whatever the input (credentials, URL, model name): retrying
    /// cannot help, and no document is to blame.
    Misconfigured,
}

/// The verdict on one failed attempt.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RetryDecision {
    /// Stop now; the reason tells the caller whom to blame.
    GiveUp(Permanent),
    /// Try again once `after` has passed.
    Retry { after: Duration },
    /// The failure was transient but the attempts (or the patience) ran out.
    Exhausted,
}

/// How hard to retry transient failures.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RetryPolicy {
    /// The back-off after the first failed attempt, before jitter; it doubles per attempt.
    pub base: Duration,
    /// The longest back-off, before jitter.
    pub cap: Duration,
    /// Attempts in all, the first included; the failure of the last one is `Exhausted`.
    pub max_attempts: u32,
    /// The longest `Retry-After` worth waiting for inside one call. A provider asking for
    /// longer (a daily quota ran out) is out for now: the call fails as unavailable and the
    /// backfill keeps the documents queued instead of holding a batch for hours.
    pub max_retry_after: Duration,
}

impl Default for RetryPolicy {
    /// Five attempts with at most 7.5 s of back-off between them, enough to ride out a
    /// provider's restart or a burst of 429s; `Retry-After` honoured up to two minutes, the longest
    /// per-minute rate-limit window a provider is likely to name.
    fn default() -> Self {
        Self {
            base: Duration::from_millis(500),
            cap: Duration::from_secs(30),
            max_attempts: 5,
            max_retry_after: Duration::from_secs(120),
        }
    }
}

impl RetryPolicy {
    /// Classifies the failure of attempt number `attempt` (1 for the first request).
    ///
    /// `retry_after` is the provider's `Retry-After`, already read with [`parse_retry_after`];
    /// `jitter` is a random draw in [0, 1) that spreads concurrent callers' retries apart.
    pub fn decide(
        &self,
        failure: ProviderFailure,
        retry_after: Option<Duration>,
        attempt: u32,
        jitter: f64,
    ) -> RetryDecision {
        if let Some(reason) = permanent(failure) {
            return RetryDecision::GiveUp(reason);
        }
        if attempt >= self.max_attempts {
            return RetryDecision::Exhausted;
        }
        let backoff = self.backoff(attempt, jitter);
        match retry_after {
            Some(asked) if asked > self.max_retry_after => RetryDecision::Exhausted,
            // The provider knows best when it recovers, but never retry sooner than the
            // back-off: a `Retry-After: 0` must not turn into a tight loop.
            Some(asked) => RetryDecision::Retry {
                after: asked.max(backoff),
            },
            None => RetryDecision::Retry { after: backoff },
        }
    }

    /// The back-off after the failure of attempt `attempt`: `base` doubled per earlier
    /// attempt, capped at `cap`, then "equal jitter" — half of it fixed, half scaled by
    /// `jitter` — so retries never come sooner than half the back-off yet do not all land at
    /// once.
    pub fn backoff(&self, attempt: u32, jitter: f64) -> Duration {
        let doublings = attempt.saturating_sub(1).min(31);
        let full = self.base.saturating_mul(1 << doublings).min(self.cap);
        let half = full / 2;
        half + half.mul_f64(jitter.clamp(0.0, 1.0))
    }
}

/// Which failures are permanent, and whose fault they are (see the module table).
fn permanent(failure: ProviderFailure) -> Option<Permanent> {
    match failure {
        ProviderFailure::Status(400 | 413 | 422) => Some(Permanent::Rejected),
        ProviderFailure::Status(408 | 429 | 500..=599) => None,
        // Other 4xx, and statuses that should never end a request (a redirect left
        // unfollowed, a 1xx): the endpoint is not what the configuration says it is.
        ProviderFailure::Status(_) => Some(Permanent::Misconfigured),
        ProviderFailure::Timeout | ProviderFailure::Connect | ProviderFailure::Transport => None,
    }
}

/// Reads a `Retry-After` header value (RFC 9110 §10.2.3): delay-seconds, or an HTTP-date
/// turned into the time left after `now` (zero when already past). `None` when unreadable,
/// so a garbled header falls back to the plain back-off.
pub fn parse_retry_after(value: &str, now: DateTime<Utc>) -> Option<Duration> {
    let value = value.trim();
    if !value.is_empty() && value.bytes().all(|b| b.is_ascii_digit()) {
        // All digits but too large for u64: "a very long time", which the policy refuses.
        return Some(value.parse().map_or(Duration::MAX, Duration::from_secs));
    }
    let at = parse_http_date(value)?;
    Some((at - now).to_std().unwrap_or(Duration::ZERO))
}

/// An HTTP-date in any of the three formats RFC 9110 §5.6.7 obliges a recipient to accept:
/// IMF-fixdate, and the obsolete RFC 850 and asctime forms. All are in GMT.
fn parse_http_date(value: &str) -> Option<DateTime<Utc>> {
    if let Ok(date) = DateTime::parse_from_rfc2822(value) {
        return Some(date.with_timezone(&Utc));
    }
    ["%A, %d-%b-%y %H:%M:%S GMT", "%a %b %e %H:%M:%S %Y"]
        .iter()
        .find_map(|format| NaiveDateTime::parse_from_str(value, format).ok())
        .map(|naive| naive.and_utc())
}

#[cfg(test)]
mod tests {
    use super::*;

    const POLICY: RetryPolicy = RetryPolicy {
        base: Duration::from_millis(100),
        cap: Duration::from_secs(2),
        max_attempts: 4,
        max_retry_after: Duration::from_secs(60),
    };

    fn decide(failure: ProviderFailure, retry_after: Option<u64>, attempt: u32) -> RetryDecision {
        POLICY.decide(failure, retry_after.map(Duration::from_secs), attempt, 0.0)
    }

    fn now() -> DateTime<Utc> {
        DateTime::parse_from_rfc3339("2015-10-21T07:28:00Z")
            .unwrap()
            .with_timezone(&Utc)
    }

    fn retry_ms(ms: u64) -> RetryDecision {
        RetryDecision::Retry {
            after: Duration::from_millis(ms),
        }
    }

    #[test]
    fn input_errors_give_up_as_rejected() {
        for status in [400, 413, 422] {
            let decision = decide(ProviderFailure::Status(status), None, 1);
            assert_eq!(
                decision,
                RetryDecision::GiveUp(Permanent::Rejected),
                "{status}"
            );
        }
    }

    #[test]
    fn auth_and_endpoint_errors_give_up_as_misconfigured_not_rejected() {
        for status in [401, 403, 404, 405, 415, 301, 101] {
            let decision = decide(ProviderFailure::Status(status), Some(1), 1);
            let expected = RetryDecision::GiveUp(Permanent::Misconfigured);
            assert_eq!(decision, expected, "{status}");
        }
    }

    #[test]
    fn permanent_failures_give_up_even_on_the_last_attempt() {
        let decision = decide(ProviderFailure::Status(400), None, POLICY.max_attempts);
        assert_eq!(decision, RetryDecision::GiveUp(Permanent::Rejected));
    }

    #[test]
    fn transient_failures_retry_with_the_back_off() {
        let transient = [408, 429, 500, 502, 503, 504, 599]
            .map(ProviderFailure::Status)
            .into_iter()
            .chain([
                ProviderFailure::Timeout,
                ProviderFailure::Connect,
                ProviderFailure::Transport,
            ]);
        for failure in transient {
            // Jitter 0 gives half of the full back-off: 100 ms halved.
            assert_eq!(decide(failure, None, 1), retry_ms(50), "{failure:?}");
        }
    }

    #[test]
    fn retry_after_longer_than_the_back_off_wins() {
        let decision = decide(ProviderFailure::Status(429), Some(3), 1);
        assert_eq!(decision, retry_ms(3_000));
    }

    #[test]
    fn back_off_longer_than_retry_after_wins() {
        // Attempt 4 of 5 backs off 800 ms (before jitter 0 halves it to 400 ms) > 0 s.
        let policy = RetryPolicy {
            max_attempts: 5,
            ..POLICY
        };
        let decision = policy.decide(ProviderFailure::Status(503), Some(Duration::ZERO), 4, 0.0);
        assert_eq!(decision, retry_ms(400));
    }

    #[test]
    fn retry_after_beyond_our_patience_is_exhausted() {
        let decision = decide(ProviderFailure::Status(429), Some(61), 1);
        assert_eq!(decision, RetryDecision::Exhausted);
        let at_the_limit = decide(ProviderFailure::Status(429), Some(60), 1);
        assert_eq!(at_the_limit, retry_ms(60_000));
    }

    #[test]
    fn the_last_attempt_is_exhausted() {
        for failure in [ProviderFailure::Status(500), ProviderFailure::Timeout] {
            let decision = decide(failure, None, POLICY.max_attempts);
            assert_eq!(decision, RetryDecision::Exhausted, "{failure:?}");
            let earlier = decide(failure, None, POLICY.max_attempts - 1);
            assert!(matches!(earlier, RetryDecision::Retry { .. }));
        }
    }

    #[test]
    fn back_off_doubles_per_attempt_up_to_the_cap() {
        let full = |attempt| POLICY.backoff(attempt, 0.0) * 2;
        let millis: Vec<u128> = (1..=7).map(|a| full(a).as_millis()).collect();
        assert_eq!(millis, [100, 200, 400, 800, 1_600, 2_000, 2_000]);
        assert_eq!(POLICY.backoff(u32::MAX, 0.0), Duration::from_secs(1));
    }

    #[test]
    fn jitter_spreads_the_back_off_over_its_upper_half() {
        assert_eq!(POLICY.backoff(2, 0.0), Duration::from_millis(100));
        assert_eq!(POLICY.backoff(2, 0.5), Duration::from_millis(150));
        assert_eq!(POLICY.backoff(2, 0.999), Duration::from_micros(199_900));
        // Out-of-range draws are clamped rather than trusted.
        assert_eq!(POLICY.backoff(2, 7.0), Duration::from_millis(200));
        assert_eq!(POLICY.backoff(2, -1.0), Duration::from_millis(100));
    }

    #[test]
    fn only_429_and_503_slow_the_whole_model() {
        assert!(ProviderFailure::Status(429).is_overload());
        assert!(ProviderFailure::Status(503).is_overload());
        for failure in [
            ProviderFailure::Status(500),
            ProviderFailure::Status(502),
            ProviderFailure::Timeout,
        ] {
            assert!(!failure.is_overload(), "{failure:?}");
        }
    }

    #[test]
    fn retry_after_reads_delay_seconds() {
        let read = |value| parse_retry_after(value, now());
        assert_eq!(read("0"), Some(Duration::ZERO));
        assert_eq!(read(" 120 "), Some(Duration::from_secs(120)));
        assert_eq!(read("99999999999999999999999"), Some(Duration::MAX));
    }

    #[test]
    fn retry_after_reads_all_three_http_date_formats() {
        for value in [
            "Wed, 21 Oct 2015 07:28:30 GMT",
            "Wednesday, 21-Oct-15 07:28:30 GMT",
            "Wed Oct 21 07:28:30 2015",
        ] {
            let parsed = parse_retry_after(value, now());
            assert_eq!(parsed, Some(Duration::from_secs(30)), "{value}");
        }
    }

    #[test]
    fn retry_after_in_the_past_means_now() {
        let parsed = parse_retry_after("Wed, 21 Oct 2015 07:00:00 GMT", now());
        assert_eq!(parsed, Some(Duration::ZERO));
    }

    #[test]
    fn unreadable_retry_after_is_ignored() {
        for value in ["", "soon", "-5", "1.5", "Wed, 99 Oct 2015 07:28:30 GMT"] {
            assert_eq!(parse_retry_after(value, now()), None, "{value:?}");
        }
    }
}
