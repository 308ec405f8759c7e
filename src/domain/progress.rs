//! Progress arithmetic for `GET /v1/migrations/{id}/progress`: throughput over a sliding
//! window of samples, and the ETA derived from it.

use std::collections::VecDeque;

use chrono::{DateTime, Duration, Utc};

use super::migration::Counts;

/// How far back the throughput meter looks: long enough to smooth batch granularity, short
/// enough that a pause or a slowdown shows within a minute.
pub const THROUGHPUT_WINDOW_SECS: i64 = 60;

/// Samples of the processed count over time; the rate is the slope across the window.
#[derive(Debug, Clone, Default)]
pub struct ThroughputMeter {
    samples: VecDeque<(DateTime<Utc>, u64)>,
}

impl ThroughputMeter {
    /// Records the processed count observed at `now` and forgets samples older than the window
    /// (keeping one just outside it as the window's starting point).
    pub fn record(&mut self, now: DateTime<Utc>, processed: u64) {
        self.samples.push_back((now, processed));
        let horizon = now - Duration::seconds(THROUGHPUT_WINDOW_SECS);
        while self.samples.len() > 2 && self.samples[1].0 <= horizon {
            self.samples.pop_front();
        }
    }

    /// Documents per second across the window, 0.0 with fewer than two samples or once the
    /// newest sample is older than the window (nothing is moving).
    pub fn rate(&self, now: DateTime<Utc>) -> f64 {
        let (Some(first), Some(last)) = (self.samples.front(), self.samples.back()) else {
            return 0.0;
        };
        if now - last.0 > Duration::seconds(THROUGHPUT_WINDOW_SECS) {
            return 0.0;
        }
        let secs = (last.0 - first.0).num_milliseconds() as f64 / 1000.0;
        if secs <= 0.0 {
            return 0.0;
        }
        last.1.saturating_sub(first.1) as f64 / secs
    }
}

/// The computed part of a progress report.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct ProgressSnapshot {
    pub remaining: u64,
    pub coverage: f64,
    /// processed / total, 1.0 for an empty migration.
    pub progress: f64,
    pub throughput_per_sec: f64,
    /// Seconds to finish at the current rate; `None` while nothing moves.
    pub eta_secs: Option<f64>,
}

impl ProgressSnapshot {
    /// Derives the report fields from counts and a measured rate.
    pub fn new(counts: Counts, throughput_per_sec: f64) -> Self {
        let remaining = counts.remaining();
        let progress = if counts.total == 0 {
            1.0
        } else {
            (counts.processed as f64 / counts.total as f64).min(1.0)
        };
        let eta_secs = if remaining == 0 {
            Some(0.0)
        } else if throughput_per_sec > 0.0 {
            Some(remaining as f64 / throughput_per_sec)
        } else {
            None
        };
        Self {
            remaining,
            coverage: counts.coverage(),
            progress,
            throughput_per_sec,
            eta_secs,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn at(secs: i64) -> DateTime<Utc> {
        DateTime::from_timestamp(1_700_000_000 + secs, 0).unwrap()
    }

    /// (seconds, processed count) pairs, recorded in order.
    type Samples = &'static [(i64, u64)];

    fn meter(samples: &[(i64, u64)]) -> ThroughputMeter {
        let mut m = ThroughputMeter::default();
        for &(secs, processed) in samples {
            m.record(at(secs), processed);
        }
        m
    }

    #[test]
    fn rate_is_zero_with_fewer_than_two_samples() {
        assert_eq!(meter(&[]).rate(at(0)), 0.0);
        assert_eq!(meter(&[(0, 500)]).rate(at(0)), 0.0);
        assert_eq!(meter(&[(0, 500)]).rate(at(30)), 0.0);
    }

    #[test]
    fn rate_is_the_slope_across_the_samples() {
        // (samples, now, documents per second)
        let cases: [(Samples, i64, f64); 5] = [
            (&[(0, 0), (10, 50)], 10, 5.0),
            (&[(0, 100), (10, 150), (20, 300)], 20, 10.0),
            (&[(0, 0), (4, 2)], 5, 0.5),
            (&[(0, 40), (10, 40)], 10, 0.0),
            (&[(0, 0), (30, 300), (60, 600)], 60, 10.0),
        ];
        for (samples, now, expected) in cases {
            assert_eq!(meter(samples).rate(at(now)), expected, "{samples:?}");
        }
    }

    #[test]
    fn rate_uses_milliseconds() {
        let mut m = ThroughputMeter::default();
        m.record(at(0), 0);
        m.record(at(0) + Duration::milliseconds(500), 10);
        assert_eq!(m.rate(at(1)), 20.0);
    }

    #[test]
    fn samples_at_the_same_instant_give_zero_not_infinity() {
        assert_eq!(meter(&[(5, 0), (5, 100)]).rate(at(5)), 0.0);
    }

    #[test]
    fn a_count_that_runs_backwards_gives_zero_not_a_negative_rate() {
        assert_eq!(meter(&[(0, 100), (10, 50)]).rate(at(10)), 0.0);
    }

    #[test]
    fn samples_older_than_the_window_are_forgotten_but_one_anchors_it() {
        // A burst of 1000 at the start, then 1/s. At 70 the sample at 0 leaves the window;
        // the one at 10 (exactly on the horizon) stays as its starting point.
        let mut m = meter(&[(0, 0), (10, 1000), (70, 1060)]);
        let kept: Vec<_> = m.samples.iter().map(|&(t, _)| t).collect();
        assert_eq!(kept, [at(10), at(70)]);
        assert_eq!(m.rate(at(70)), 1.0);
        m.record(at(80), 1070);
        assert_eq!(m.samples.len(), 3);
        assert_eq!(m.rate(at(80)), 1.0);
    }

    #[test]
    fn the_meter_stays_bounded() {
        let mut m = ThroughputMeter::default();
        for s in 0..10_000 {
            m.record(at(s), s as u64 * 3);
        }
        assert!(
            m.samples.len() <= THROUGHPUT_WINDOW_SECS as usize + 2,
            "{}",
            m.samples.len()
        );
        assert_eq!(m.rate(at(9_999)), 3.0);
    }

    #[test]
    fn rate_is_zero_once_the_newest_sample_is_stale() {
        let m = meter(&[(0, 0), (10, 100)]);
        assert_eq!(
            m.rate(at(10 + THROUGHPUT_WINDOW_SECS)),
            10.0,
            "on the edge: still moving"
        );
        assert_eq!(m.rate(at(11 + THROUGHPUT_WINDOW_SECS)), 0.0);
        assert_eq!(m.rate(at(100_000)), 0.0);
    }

    fn counts(total: u64, processed: u64, skipped: u64) -> Counts {
        Counts {
            total,
            processed,
            skipped,
            failed: 3,
        }
    }

    #[test]
    fn snapshot_fields_from_counts_and_rate() {
        // (counts, rate, remaining, coverage, progress, eta)
        let cases = [
            (counts(0, 0, 0), 0.0, 0, 1.0, 1.0, Some(0.0)),
            (counts(0, 0, 0), 5.0, 0, 1.0, 1.0, Some(0.0)),
            (counts(100, 0, 0), 0.0, 100, 0.0, 0.0, None),
            (counts(100, 40, 10), 5.0, 50, 40.0 / 90.0, 0.4, Some(10.0)),
            (counts(100, 40, 10), 0.0, 50, 40.0 / 90.0, 0.4, None),
            (counts(100, 50, 0), 2.5, 50, 0.5, 0.5, Some(20.0)),
            (counts(10, 8, 2), 0.0, 0, 1.0, 0.8, Some(0.0)),
            (counts(10, 10, 0), 0.0, 0, 1.0, 1.0, Some(0.0)),
            (counts(5, 0, 5), 0.0, 0, 1.0, 0.0, Some(0.0)),
            (counts(10, 12, 0), 1.0, 0, 1.0, 1.0, Some(0.0)),
        ];
        for (c, rate, remaining, coverage, progress, eta_secs) in cases {
            let s = ProgressSnapshot::new(c, rate);
            let expected = ProgressSnapshot {
                remaining,
                coverage,
                progress,
                throughput_per_sec: rate,
                eta_secs,
            };
            assert_eq!(s, expected, "{c:?} at {rate}/s");
        }
    }
}

/// A provider's client-side budget, as far as estimates need it; `None` means unbounded.
#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub struct Pace {
    /// Inputs per request.
    pub max_batch: Option<usize>,
    pub requests_per_minute: Option<u32>,
    pub tokens_per_minute: Option<u32>,
}

/// Estimated tokens of a text of `chars` characters: about four characters a token for
/// English, rounded up (the same rule the providers' pacing uses).
pub fn estimate_tokens(chars: u64) -> u64 {
    chars.div_ceil(4)
}

/// Seconds a backfill of `documents` texts totalling `tokens` takes at `pace`, when the
/// pace bounds it; `None` when neither budget is set (the provider's own speed decides).
pub fn estimate_secs(documents: u64, tokens: u64, batch_size: u32, pace: Pace) -> Option<f64> {
    let per_request = pace
        .max_batch
        .map_or(batch_size as u64, |m| (m as u64).min(batch_size as u64))
        .max(1);
    let requests = documents.div_ceil(per_request);
    let by_requests = pace
        .requests_per_minute
        .map(|rpm| requests as f64 * 60.0 / rpm as f64);
    let by_tokens = pace
        .tokens_per_minute
        .map(|tpm| tokens as f64 * 60.0 / tpm as f64);
    match (by_requests, by_tokens) {
        (Some(a), Some(b)) => Some(a.max(b)),
        (one, other) => one.or(other),
    }
}
