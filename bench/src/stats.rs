//! Medians and percentiles of repeated measurements, and their formatting.

use std::time::{Duration, Instant};

/// The `p`-th percentile (0–100) of `samples` by nearest rank; zero for no samples.
pub fn percentile(samples: &[Duration], p: f64) -> Duration {
    let mut sorted = samples.to_vec();
    sorted.sort();
    if sorted.is_empty() {
        return Duration::ZERO;
    }
    let rank = ((p / 100.0) * sorted.len() as f64).ceil() as usize;
    sorted[rank.clamp(1, sorted.len()) - 1]
}

pub fn median(samples: &[Duration]) -> Duration {
    percentile(samples, 50.0)
}

/// The median of floats; zero for none.
pub fn median_f64(values: &[f64]) -> f64 {
    let mut sorted = values.to_vec();
    sorted.sort_by(f64::total_cmp);
    match sorted.len() {
        0 => 0.0,
        n if n % 2 == 1 => sorted[n / 2],
        n => (sorted[n / 2 - 1] + sorted[n / 2]) / 2.0,
    }
}

/// Runs `f` `reps` times and returns each run's duration.
pub fn time_each<T>(reps: usize, mut f: impl FnMut() -> T) -> Vec<Duration> {
    (0..reps)
        .map(|_| {
            let start = Instant::now();
            std::hint::black_box(f());
            start.elapsed()
        })
        .collect()
}

pub fn ms(d: Duration) -> String {
    format!("{:.3} ms", d.as_secs_f64() * 1e3)
}

/// A goal of the issue on a ratio, so that every section says whether its figure meets it.
#[derive(Debug, Clone, Copy)]
pub enum Goal {
    AtMost(f64),
    AtLeast(f64),
    /// Within ± this fraction of 1×.
    Flat(f64),
}

impl Goal {
    pub fn met(self, ratio: f64) -> bool {
        match self {
            Goal::AtMost(bound) => ratio <= bound,
            Goal::AtLeast(bound) => ratio >= bound,
            Goal::Flat(band) => (ratio - 1.0).abs() <= band,
        }
    }

    /// The goal and whether `ratio` meets it, as "≤ 1.3×: met" or "≥ 0.8×: **not met**".
    pub fn verdict(self, ratio: f64) -> String {
        format!("{self}: {}", met(self.met(ratio)))
    }
}

/// "met", or "**not met**" in bold so that a miss stands out in the results.
pub fn met(met: bool) -> &'static str {
    if met { "met" } else { "**not met**" }
}

impl std::fmt::Display for Goal {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Goal::AtMost(bound) => write!(f, "≤ {bound}×"),
            Goal::AtLeast(bound) => write!(f, "≥ {bound}×"),
            Goal::Flat(band) => write!(f, "within ±{:.0}%", band * 100.0),
        }
    }
}

pub fn ratio(a: f64, b: f64) -> String {
    if b == 0.0 {
        "n/a".to_owned()
    } else {
        format!("{:.2}×", a / b)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn percentiles_use_the_nearest_rank() {
        let samples: Vec<Duration> = (1..=100).map(Duration::from_millis).collect();
        assert_eq!(median(&samples), Duration::from_millis(50));
        assert_eq!(percentile(&samples, 99.0), Duration::from_millis(99));
        assert_eq!(percentile(&samples, 100.0), Duration::from_millis(100));
        assert_eq!(median(&[]), Duration::ZERO);
        assert_eq!(median_f64(&[3.0, 1.0, 2.0]), 2.0);
    }

    #[test]
    fn goals_say_whether_a_ratio_meets_them() {
        assert_eq!(Goal::AtMost(1.3).verdict(1.3), "≤ 1.3×: met");
        assert_eq!(Goal::AtLeast(0.8).verdict(0.79), "≥ 0.8×: **not met**");
        assert!(Goal::Flat(0.25).met(0.76) && Goal::Flat(0.25).met(1.25));
        assert!(!Goal::Flat(0.25).met(1.26) && !Goal::Flat(0.25).met(0.74));
        assert_eq!(Goal::Flat(0.25).to_string(), "within ±25%");
    }
}
