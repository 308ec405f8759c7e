//! The Criterion micro-benchmarks (`bench/benches/micro.rs`), reported as ratios: each measure is
//! read from Criterion's `estimates.json` and set against its baseline from the same run.
//! `bench/run.sh` runs `cargo bench --bench micro` before this binary; without those files
//! (a smoke run, or `cargo bench` not run) the section says so.

use std::path::{Path, PathBuf};

use anyhow::Context;

use super::stats::{Goal, ratio};

/// (measure, baseline, what the ratio shows, goal) — benchmark ids as `group/function`.
const PAIRS: [(&str, &str, &str, Option<Goal>); 3] = [
    (
        "routing/snapshot_at",
        "routing/route_table",
        "a routing decision read from the published snapshot vs computed from the migration",
        Some(Goal::AtMost(1.0)),
    ),
    (
        "index/search_top10",
        "index/bandwidth_floor",
        "exact top-10 scan of 10,000 × 384 f32 vs reading the same bytes",
        Some(Goal::AtMost(2.0)),
    ),
    (
        "embed/hash_v2",
        "embed/hash_v1",
        "one 100-word text: 384 vs 256 dimensions",
        None,
    ),
];

/// The `## Micro-benchmarks` section; a smoke run only names them (`cargo test --benches`
/// runs each once in CI).
pub fn report(smoke: bool) -> anyhow::Result<String> {
    let dir = criterion_dir()?;
    let mut out = String::from(
        "## Micro-benchmarks\n\nCriterion, `cargo bench --locked --package reembed-bench --bench micro` \
         (`bench/benches/micro.rs`); mean time per iteration from \
         `target/criterion/<id>/new/estimates.json`.\n\n",
    );
    if smoke || !dir.exists() {
        out += "Not timed in this run: `bench/run.sh` runs `cargo bench --package reembed-bench --bench micro` first.\n";
        return Ok(out);
    }
    out += "| measure / baseline | what it shows | mean | baseline mean | ratio | goal |\n\
            |---|---|---|---|---|---|\n";
    for (measure, baseline, meaning, goal) in PAIRS {
        let (m, b) = (mean_ns(&dir, measure)?, mean_ns(&dir, baseline)?);
        let goal = goal.map(|goal| goal.verdict(m / b)).unwrap_or_default();
        out += &format!(
            "| `{measure}` / `{baseline}` | {meaning} | {} | {} | {} | {goal} |\n",
            nanos(m),
            nanos(b),
            ratio(m, b),
        );
    }
    Ok(out)
}

/// `target/criterion`, beside the profile directory this binary runs from.
fn criterion_dir() -> anyhow::Result<PathBuf> {
    let exe = std::env::current_exe()?;
    let target = exe
        .parent()
        .and_then(Path::parent)
        .context("reembed-bench runs from a target directory")?;
    Ok(target.join("criterion"))
}

/// The mean estimate of benchmark `id`, in nanoseconds.
fn mean_ns(dir: &Path, id: &str) -> anyhow::Result<f64> {
    let path = dir.join(id).join("new/estimates.json");
    let text = std::fs::read_to_string(&path)
        .with_context(|| format!("cannot read {}", path.display()))?;
    let estimates: serde_json::Value = serde_json::from_str(&text)?;
    estimates["mean"]["point_estimate"]
        .as_f64()
        .with_context(|| format!("no mean in {}", path.display()))
}

fn nanos(ns: f64) -> String {
    if ns >= 1e6 {
        format!("{:.3} ms", ns / 1e6)
    } else if ns >= 1e3 {
        format!("{:.2} µs", ns / 1e3)
    } else {
        format!("{ns:.1} ns")
    }
}
