//! Progress arithmetic for `GET /v1/migrations/{id}/progress`: throughput over a sliding
//! window of wall-clock time, and the ETA derived from it.

use std::collections::VecDeque;

use chrono::{DateTime, Duration, Utc};

use super::migration::Counts;

/// How far back the throughput meter looks: long enough to smooth batch granularity, short
/// enough that a pause or a slowdown shows within a minute.
pub const THROUGHPUT_WINDOW_SECS: i64 = 60;

/// The least wall-clock time a rate is measured over: a rate over less is dominated by when
/// the first batch happened to commit.
const MIN_MEASURED_MILLIS: i64 = 1_000;

/// Samples closer together than this are merged into one, which keeps the meter at most
/// about one sample per second of the window however many batches and writes commit.
const SAMPLE_RESOLUTION_MILLIS: i64 = 250;

/// The processed count over wall-clock time since the backfill last started running.
///
/// The rate is the documents processed over the window divided by the wall-clock time the
/// window spans, *up to now*: time spent embedding a batch that has not committed yet counts,
/// so concurrent batches committing milliseconds apart do not read as a burst. Built with
/// `starting` when a migration starts or resumes, so the window never reaches back into a
/// pause.
#[derive(Debug, Clone, Default)]
pub struct ThroughputMeter {
    /// (when, processed count from then on), oldest first; the first is the anchor: when the
    /// backfill (re)started and the count at that moment. Empty for a meter that never started.
    samples: VecDeque<(DateTime<Utc>, u64)>,
}

impl ThroughputMeter {
    /// A meter whose backfill (re)started at `now` with `processed` documents done.
    pub fn starting(now: DateTime<Utc>, processed: u64) -> Self {
        Self {
            samples: VecDeque::from([(now, processed)]),
        }
    }

    /// Records the processed count observed at `now`, merging it into the newest sample when
    /// that is very recent, and forgets samples no window starting after `now` can need
    /// (keeping the one that gives the count at the window's start). Ignored by a meter that
    /// never started.
    pub fn record(&mut self, now: DateTime<Utc>, processed: u64) {
        let Some(&(newest, _)) = self.samples.back() else {
            return;
        };
        let merge = self.samples.len() > 1
            && now - newest < Duration::milliseconds(SAMPLE_RESOLUTION_MILLIS);
        if merge {
            self.samples.back_mut().expect("not empty").1 = processed;
        } else {
            self.samples.push_back((now, processed));
        }
        let horizon = now - Duration::seconds(THROUGHPUT_WINDOW_SECS);
        while self.samples.len() > 2 && self.samples[1].0 <= horizon {
            self.samples.pop_front();
        }
    }

    /// Documents per second over the window ending at `now`; `None` until the backfill has
    /// run for a second and processed a document since it started (too little to estimate).
    pub fn rate(&self, now: DateTime<Utc>) -> Option<f64> {
        let (&(anchor, anchored), &(_, current)) = (self.samples.front()?, self.samples.back()?);
        let start = anchor.max(now - Duration::seconds(THROUGHPUT_WINDOW_SECS));
        let measured_ms = (now - start).num_milliseconds();
        if current <= anchored || (now - anchor).num_milliseconds() < MIN_MEASURED_MILLIS {
            return None;
        }
        let at_start = self.count_at(start);
        Some(current.saturating_sub(at_start) as f64 * 1000.0 / measured_ms as f64)
    }

    /// The processed count at `at`: that of the newest sample not after it.
    fn count_at(&self, at: DateTime<Utc>) -> u64 {
        self.samples
            .iter()
            .take_while(|&&(when, _)| when <= at)
            .last()
            .map_or(0, |&(_, count)| count)
    }
}

/// A provider the backfill is waiting for (API.md progress `waiting`): unreachable since
/// `since`, with the last error it gave. Transient: it lives in memory while the migration
/// runs and is not persisted.
#[derive(Debug, Clone, PartialEq)]
pub struct Waiting {
    pub model: String,
    pub since: DateTime<Utc>,
    pub last_error: String,
}

/// The computed part of a progress report.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct ProgressSnapshot {
    pub remaining: u64,
    pub coverage: f64,
    /// processed / total, 1.0 for an empty migration.
    pub progress: f64,
    /// Documents per second over the meter's window; `None` until it can be estimated.
    pub throughput_per_sec: Option<f64>,
    /// Seconds to finish at that rate; 0 when nothing remains, `None` while the rate is
    /// unknown or nothing moves.
    pub eta_secs: Option<f64>,
}

impl ProgressSnapshot {
    /// Derives the report fields from counts and a measured rate.
    pub fn new(counts: Counts, throughput_per_sec: Option<f64>) -> Self {
        let remaining = counts.remaining();
        let progress = if counts.total == 0 {
            1.0
        } else {
            (counts.processed as f64 / counts.total as f64).min(1.0)
        };
        let eta_secs = match throughput_per_sec {
            _ if remaining == 0 => Some(0.0),
            Some(rate) if rate > 0.0 => Some(remaining as f64 / rate),
            _ => None,
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

    fn at_ms(millis: i64) -> DateTime<Utc> {
        at(0) + Duration::milliseconds(millis)
    }

    /// (seconds, processed count) pairs, recorded in order.
    type Samples = &'static [(i64, u64)];

    /// A meter started at 0 with `anchored` done, then the (seconds, processed) samples.
    fn meter(anchored: u64, samples: &[(i64, u64)]) -> ThroughputMeter {
        let mut m = ThroughputMeter::starting(at(0), anchored);
        for &(secs, processed) in samples {
            m.record(at(secs), processed);
        }
        m
    }

    #[test]
    fn a_meter_that_never_started_has_no_rate_and_ignores_samples() {
        let mut m = ThroughputMeter::default();
        m.record(at(5), 100);
        assert_eq!(m.rate(at(10)), None);
    }

    #[test]
    fn no_rate_until_a_second_has_passed_and_a_document_was_processed() {
        assert_eq!(meter(0, &[]).rate(at(30)), None, "nothing processed");
        assert_eq!(
            meter(40, &[(20, 40)]).rate(at(30)),
            None,
            "nothing since the start"
        );
        let mut early = meter(0, &[]);
        early.record(at_ms(300), 50);
        assert_eq!(early.rate(at_ms(900)), None, "under a second");
        assert_eq!(early.rate(at_ms(1_000)), Some(50.0));
    }

    #[test]
    fn the_rate_counts_wall_clock_time_up_to_now() {
        // (anchored, samples, now, documents per second)
        let cases: [(u64, Samples, i64, f64); 5] = [
            (0, &[(5, 100)], 5, 20.0),
            // Four batches embedded for 20 s, committed within a second: 400 in 20 s.
            (0, &[(20, 100), (20, 400)], 20, 20.0),
            // The same, read 5 s later while the next batches are still embedding.
            (0, &[(20, 400)], 25, 16.0),
            (100, &[(10, 150), (20, 300)], 20, 10.0),
            (0, &[(30, 300), (60, 600)], 60, 10.0),
        ];
        for (anchored, samples, now, expected) in cases {
            let rate = meter(anchored, samples).rate(at(now));
            assert_eq!(rate, Some(expected), "{samples:?} at {now}");
        }
    }

    #[test]
    fn the_window_slides_and_reads_the_count_at_its_start() {
        // A burst of 1000 in the first 10 s, then 1/s: after the window has passed the
        // burst, only the steady rate remains.
        let mut m = meter(0, &[(10, 1000)]);
        for s in 11..=100 {
            m.record(at(s), 1000 + (s as u64 - 10));
        }
        assert_eq!(m.rate(at(100)), Some(1.0));
    }

    #[test]
    fn a_stall_decays_the_rate_to_zero() {
        let m = meter(0, &[(10, 100)]);
        assert_eq!(m.rate(at(20)), Some(5.0));
        assert_eq!(m.rate(at(10 + THROUGHPUT_WINDOW_SECS)), Some(0.0));
    }

    #[test]
    fn the_meter_stays_bounded_under_many_commits() {
        let mut m = ThroughputMeter::starting(at(0), 0);
        for ms in 0..100_000 {
            m.record(at_ms(ms * 10), ms as u64);
        }
        let limit = (THROUGHPUT_WINDOW_SECS * 1000 / SAMPLE_RESOLUTION_MILLIS) as usize + 3;
        assert!(m.samples.len() <= limit, "{}", m.samples.len());
        let rate = m.rate(at_ms(999_990)).unwrap();
        assert!((rate - 100.0).abs() < 1.0, "{rate}");
    }

    fn counts(total: u64, processed: u64, skipped: u64) -> Counts {
        Counts {
            total,
            processed,
            skipped,
            failed: 3,
            truncated: 1,
            tokens_embedded: 0,
        }
    }

    #[test]
    fn snapshot_fields_from_counts_and_rate() {
        // (counts, rate, remaining, coverage, progress, eta)
        let cases = [
            (counts(0, 0, 0), None, 0, 1.0, 1.0, Some(0.0)),
            (counts(0, 0, 0), Some(5.0), 0, 1.0, 1.0, Some(0.0)),
            (counts(100, 0, 0), Some(0.0), 100, 0.0, 0.0, None),
            (counts(100, 0, 0), None, 100, 0.0, 0.0, None),
            (
                counts(100, 40, 10),
                Some(5.0),
                50,
                40.0 / 90.0,
                0.4,
                Some(10.0),
            ),
            (counts(100, 40, 10), None, 50, 40.0 / 90.0, 0.4, None),
            (counts(100, 50, 0), Some(2.5), 50, 0.5, 0.5, Some(20.0)),
            (counts(10, 8, 2), None, 0, 1.0, 0.8, Some(0.0)),
            (counts(10, 10, 0), Some(0.0), 0, 1.0, 1.0, Some(0.0)),
            (counts(5, 0, 5), None, 0, 1.0, 0.0, Some(0.0)),
            (counts(10, 12, 0), Some(1.0), 0, 1.0, 1.0, Some(0.0)),
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
            assert_eq!(s, expected, "{c:?} at {rate:?}/s");
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
