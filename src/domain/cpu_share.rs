//! The backfill's share of this process's CPU while requests keep it busy.
//!
//! Part of a backfill's cost is paid on this machine whatever the provider: every batch is
//! committed here (SQLite statements, the vector index, the async steps around them), and a
//! built-in model computes its vectors here too. The embedding threads run at background
//! priority (`embed::background`), but the commit runs beside the requests at theirs: at full
//! speed it took about a third of the throughput of `/v1/routing` (bench/RESULTS.md). The
//! provider's controller (`throttle`) cannot see that cost, so this one watches the process
//! itself.
//!
//! Every window the caller reports how busy the runtime that serves requests was (its workers'
//! busy time over their wall time) and how many requests arrived. The backfill's own steps keep
//! that runtime 15–30% busy (2 workers, bench/RESULTS.md routing); requests that want more CPU
//! than is left push it to 90–100%. So a runtime at least `BUSY` busy while requests arrive
//! means requests want the CPU the backfill uses: its share halves, down to a least share (a fifth by default) so that
//! it always moves forward. Otherwise the share grows back by `STEP` per window, to the whole.
//! A busy runtime with no request in the window is the backfill's own work and never
//! throttles it; requests that leave CPU to spare never do either, however many.
//!
//! The backfill applies the share as a duty cycle (`rest_after`): after a batch's local work
//! of `w` its slot rests `w × (1 − share) / share` before it is used again, so the backfill
//! keeps about `share` of the CPU it would take at full speed.
//!
//! Pure: the caller measures and passes the window's fractions.

use std::time::Duration;

/// The smallest share unless configured (`--backfill-min-cpu-percent`), in percent: a
/// saturated server still backfills at a fifth of its full speed, and requests keep most of
/// their idle throughput (bench/RESULTS.md, routing).
pub const DEFAULT_MIN_PERCENT: u8 = 20;
/// `DEFAULT_MIN_PERCENT` as a share.
pub const DEFAULT_MIN_SHARE: f64 = DEFAULT_MIN_PERCENT as f64 / 100.0;
/// What the share grows by per window without pressure: from the least to the whole in nine
/// windows, about 2 s.
const STEP: f64 = 0.1;
/// Runtime busy at least this much: no CPU to spare.
const BUSY: f64 = 0.8;

/// One window's measurements.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct LoadSample {
    /// The request runtime's workers' busy time over their wall time, in 0..=1.
    pub runtime_busy: f64,
    /// Requests that arrived in the window.
    pub requests: u64,
}

impl LoadSample {
    /// Whether requests are asking for the CPU the backfill would use.
    pub fn is_pressure(&self) -> bool {
        self.runtime_busy >= BUSY && self.requests > 0
    }
}

/// The additive-increase, multiplicative-decrease controller of the share; see the module doc.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct CpuShare {
    share: f64,
    /// The least share it yields to, in (0, 1]; 1 never yields.
    min: f64,
}

impl Default for CpuShare {
    /// The whole CPU, yielding down to `DEFAULT_MIN_SHARE`.
    fn default() -> Self {
        Self::new(DEFAULT_MIN_SHARE)
    }
}

impl CpuShare {
    /// The whole CPU (nothing has asked for it yet), yielding down to `min`, which is kept
    /// within (0, 1].
    pub fn new(min: f64) -> Self {
        Self {
            share: 1.0,
            min: min.clamp(0.01, 1.0),
        }
    }

    /// The whole CPU again, as when no backfill runs.
    pub fn reset(&mut self) {
        self.share = 1.0;
    }

    /// The share after one more window.
    pub fn observe(&mut self, sample: LoadSample) -> f64 {
        self.share = if sample.is_pressure() {
            (self.share / 2.0).max(self.min)
        } else {
            (self.share + STEP).min(1.0)
        };
        self.share
    }

    /// The fraction of its full speed the backfill may use now.
    pub fn share(&self) -> f64 {
        self.share
    }

    /// Whether the backfill runs below its full speed for requests.
    pub fn is_throttled(&self) -> bool {
        self.share < 1.0
    }

    /// How long a batch slot rests after `work` of local work, so that the slot is busy
    /// `share` of the time.
    pub fn rest_after(&self, work: Duration) -> Duration {
        work.mul_f64((1.0 - self.share) / self.share)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const PRESSURE: LoadSample = LoadSample {
        runtime_busy: 0.95,
        requests: 10_000,
    };

    fn sample(runtime_busy: f64, requests: u64) -> LoadSample {
        LoadSample {
            runtime_busy,
            requests,
        }
    }

    #[test]
    fn starts_with_the_whole_cpu_and_no_rest() {
        let share = CpuShare::default();
        assert_eq!(share.share(), 1.0);
        assert!(!share.is_throttled());
        assert_eq!(share.rest_after(Duration::from_secs(1)), Duration::ZERO);
    }

    #[test]
    fn requests_on_a_busy_runtime_halve_the_share_down_to_the_least() {
        let mut share = CpuShare::default();
        assert_eq!(share.observe(PRESSURE), 0.5);
        assert_eq!(share.observe(PRESSURE), 0.25);
        assert_eq!(share.observe(PRESSURE), DEFAULT_MIN_SHARE);
        assert_eq!(share.observe(PRESSURE), DEFAULT_MIN_SHARE);
        assert!(share.is_throttled());
        share.reset();
        assert_eq!(share.share(), 1.0);
    }

    #[test]
    fn a_least_share_of_one_never_yields() {
        let mut share = CpuShare::new(1.0);
        for _ in 0..5 {
            assert_eq!(share.observe(PRESSURE), 1.0);
        }
        assert!(!share.is_throttled());
    }

    #[test]
    fn the_least_share_is_configurable() {
        let mut share = CpuShare::new(0.6);
        assert_eq!(share.observe(PRESSURE), 0.6);
        assert_eq!(share.observe(PRESSURE), 0.6);
    }

    #[test]
    fn a_busy_runtime_without_requests_is_the_backfill_itself_and_never_throttles_it() {
        let mut share = CpuShare::default();
        for _ in 0..10 {
            assert_eq!(share.observe(sample(1.0, 0)), 1.0);
        }
    }

    #[test]
    fn requests_that_leave_cpu_to_spare_never_throttle_it() {
        let mut share = CpuShare::default();
        for _ in 0..10 {
            assert_eq!(share.observe(sample(0.5, 10_000)), 1.0);
        }
    }

    #[test]
    fn one_heavy_request_on_a_busy_runtime_is_pressure() {
        assert!(sample(0.9, 1).is_pressure());
        assert!(!sample(0.79, 1).is_pressure());
    }

    #[test]
    fn the_share_grows_back_by_steps_once_the_pressure_ends() {
        let mut share = CpuShare::default();
        for _ in 0..4 {
            share.observe(PRESSURE);
        }
        let calm = sample(0.3, 0);
        let mut grown = vec![share.share()];
        while share.is_throttled() && grown.len() < 20 {
            grown.push(share.observe(calm));
        }
        assert!(grown.windows(2).all(|w| w[1] > w[0]), "{grown:?}");
        assert_eq!(
            grown.len(),
            10,
            "from the least to the whole in 9 windows: {grown:?}"
        );
        assert_eq!(share.share(), 1.0);
    }

    #[test]
    fn the_rest_keeps_a_slot_busy_for_its_share_of_the_time() {
        let mut share = CpuShare::default();
        share.observe(PRESSURE);
        share.observe(PRESSURE);
        let work = Duration::from_millis(100);
        let rest = share.rest_after(work);
        assert_eq!(rest, Duration::from_millis(300));
        let busy = work.as_secs_f64() / (work + rest).as_secs_f64();
        assert!((busy - share.share()).abs() < 1e-9);
    }
}
