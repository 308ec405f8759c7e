//! Where this process's CPU time goes, by thread name: a profile taken from
//! `/proc/self/task/*/stat` around a measurement, to show what competes with requests when a
//! figure misses its goal. Threads are grouped by their (kernel-truncated) names, such as
//! `tokio-rt-worker` for the request workers and `reembed-backgro` for the background pool.

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

/// CPU ticks used so far by each thread name, and when they were read.
pub struct CpuSample {
    at: Instant,
    ticks: BTreeMap<String, u64>,
}

impl CpuSample {
    /// Reads the user + system ticks of every live thread of this process.
    pub fn now() -> anyhow::Result<CpuSample> {
        let mut ticks = BTreeMap::new();
        for task in std::fs::read_dir("/proc/self/task")? {
            // A thread may exit between the listing and the read: skip it.
            let Ok(stat) = std::fs::read_to_string(task?.path().join("stat")) else {
                continue;
            };
            if let Some((name, used)) = parse_stat(&stat) {
                *ticks.entry(name).or_default() += used;
            }
        }
        Ok(CpuSample {
            at: Instant::now(),
            ticks,
        })
    }

    /// The share of one core each thread name used from `earlier` to this sample, in percent,
    /// largest first. Threads that exited in between are not counted.
    pub fn since(&self, earlier: &CpuSample) -> Vec<(String, f64)> {
        let elapsed = self
            .at
            .duration_since(earlier.at)
            .max(Duration::from_millis(1));
        let ticks_per_sec = clock_ticks_per_sec();
        let mut shares: Vec<(String, f64)> = self
            .ticks
            .iter()
            .map(|(name, &now)| {
                let used = now.saturating_sub(earlier.ticks.get(name).copied().unwrap_or(0));
                let secs = used as f64 / ticks_per_sec;
                (name.clone(), 100.0 * secs / elapsed.as_secs_f64())
            })
            .filter(|(_, share)| *share >= 0.5)
            .collect();
        shares.sort_by(|a, b| b.1.total_cmp(&a.1));
        shares
    }
}

/// The thread name and its user + system ticks from one `stat` line; the name sits in
/// parentheses and may itself hold spaces or parentheses, so fields are counted from the last
/// `)`.
fn parse_stat(stat: &str) -> Option<(String, u64)> {
    let open = stat.find('(')?;
    let close = stat.rfind(')')?;
    let name = stat.get(open + 1..close)?.to_owned();
    let fields: Vec<&str> = stat.get(close + 1..)?.split_whitespace().collect();
    // After the name: state is field 3 of stat(5), utime 14 and stime 15.
    let utime: u64 = fields.get(11)?.parse().ok()?;
    let stime: u64 = fields.get(12)?.parse().ok()?;
    Some((name, utime + stime))
}

fn clock_ticks_per_sec() -> f64 {
    // SAFETY: sysconf only reads its integer argument.
    let ticks = unsafe { libc::sysconf(libc::_SC_CLK_TCK) };
    if ticks > 0 { ticks as f64 } else { 100.0 }
}

/// `name share%, …` for the results.
pub fn describe(shares: &[(String, f64)]) -> String {
    let parts: Vec<String> = shares
        .iter()
        .map(|(name, share)| format!("`{name}` {share:.0}%"))
        .collect();
    parts.join(", ")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_the_name_and_ticks_of_a_stat_line() {
        let stat = "4242 (tokio-rt-worker) R 1 2 3 4 5 6 7 8 9 10 250 40 0 0 20 0 1 0";
        assert_eq!(parse_stat(stat), Some(("tokio-rt-worker".into(), 290)));
        let odd = "7 (a (b) c) S 1 2 3 4 5 6 7 8 9 10 3 4 0 0";
        assert_eq!(parse_stat(odd), Some(("a (b) c".into(), 7)));
        assert_eq!(parse_stat("garbage"), None);
    }

    #[test]
    fn a_busy_thread_shows_up_in_the_profile() {
        let before = CpuSample::now().unwrap();
        let spin = std::thread::Builder::new()
            .name("bench-spin".into())
            .spawn(|| {
                let start = Instant::now();
                let mut x = 0u64;
                while start.elapsed() < Duration::from_millis(300) {
                    x = std::hint::black_box(x.wrapping_add(1));
                }
            })
            .unwrap();
        std::thread::sleep(Duration::from_millis(250));
        let after = CpuSample::now().unwrap();
        spin.join().unwrap();
        let shares = after.since(&before);
        assert!(
            shares
                .iter()
                .any(|(name, share)| name == "bench-spin" && *share > 20.0),
            "{shares:?}"
        );
    }
}
