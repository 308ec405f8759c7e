//! Routing throughput: `GET /v1/routing` against `GET /healthz` on the same server with the
//! same tool and connections, alternated, medians; first idle, then while a backfill runs at
//! full speed in the same process.

use std::time::Duration;

use super::cpu::{self, CpuSample};
use super::stats::{Goal, median, median_f64, met, ms, ratio};
use super::wrk::{Load, Request, Tool};
use super::{Server, registry, source_store};

/// The goal for the p99 of `GET /v1/routing` at 64 connections.
const P99_GOAL: Duration = Duration::from_millis(2);

pub struct Sizes {
    tool: Tool,
    connections: usize,
    duration: Duration,
    rounds: usize,
    /// Documents to backfill while measuring under load: enough to outlast the measurement.
    docs: usize,
    words: usize,
}

impl Sizes {
    pub fn new(smoke: bool) -> Self {
        if smoke {
            Sizes {
                tool: Tool::InProcess,
                connections: 4,
                duration: Duration::from_millis(200),
                rounds: 1,
                docs: 300,
                words: 20,
            }
        } else {
            Sizes {
                tool: Tool::Wrk,
                connections: 64,
                duration: Duration::from_secs(5),
                rounds: 3,
                docs: 300_000,
                words: 100,
            }
        }
    }
}

/// One alternated series: each round loads `/healthz` then `/v1/routing`.
struct Series {
    healthz: Vec<Load>,
    routing: Vec<Load>,
}

impl Series {
    async fn measure(sizes: &Sizes, base: &str) -> anyhow::Result<Series> {
        let mut series = Series {
            healthz: Vec::new(),
            routing: Vec::new(),
        };
        for _ in 0..sizes.rounds {
            series.round(sizes, base).await?;
        }
        Ok(series)
    }

    async fn round(&mut self, sizes: &Sizes, base: &str) -> anyhow::Result<()> {
        let (c, d) = (sizes.connections, sizes.duration);
        let (healthz, routing) = (format!("{base}/healthz"), format!("{base}/v1/routing"));
        let healthz = sizes.tool.run(c, d, Request::Get(&healthz)).await?;
        let routing = sizes.tool.run(c, d, Request::Get(&routing)).await?;
        self.healthz.push(healthz);
        self.routing.push(routing);
        Ok(())
    }

    /// Rounds while the migration at `progress_url` is in progress: a round during which it
    /// completed is dropped, since part of it ran idle. Returns the last progress seen.
    async fn measure_while_backfilling(
        sizes: &Sizes,
        base: &str,
        progress_url: &str,
    ) -> anyhow::Result<(Series, serde_json::Value)> {
        let mut series = Series {
            healthz: Vec::new(),
            routing: Vec::new(),
        };
        let client = reqwest::Client::new();
        for _ in 0..sizes.rounds {
            series.round(sizes, base).await?;
            let progress: serde_json::Value = client.get(progress_url).send().await?.json().await?;
            if progress["state"] != "in_progress" {
                series.healthz.pop();
                series.routing.pop();
                return Ok((series, progress));
            }
        }
        let progress = client.get(progress_url).send().await?.json().await?;
        Ok((series, progress))
    }

    fn rps(loads: &[Load]) -> f64 {
        median_f64(&loads.iter().map(|l| l.requests_per_sec).collect::<Vec<_>>())
    }

    fn p99(loads: &[Load]) -> Duration {
        median(&loads.iter().map(|l| l.p99).collect::<Vec<_>>())
    }

    fn rows(&self, label: &str, healthz_baseline: f64) -> String {
        if self.routing.is_empty() {
            return format!("| {label} | no complete round | | | |\n");
        }
        let all = |loads: &[Load]| {
            let each: Vec<String> = loads
                .iter()
                .map(|l| format!("{:.0}", l.requests_per_sec))
                .collect();
            each.join(", ")
        };
        let (h, r) = (Self::rps(&self.healthz), Self::rps(&self.routing));
        let routing_p99 = Self::p99(&self.routing);
        let goals = if label == "idle" {
            format!(
                "goal {}; p99 ≤ {}: {}",
                Goal::AtLeast(0.9).verdict(r / healthz_baseline),
                ms(P99_GOAL),
                met(routing_p99 <= P99_GOAL),
            )
        } else {
            format!(
                "goal {} of idle `/healthz`",
                Goal::AtLeast(0.8).verdict(r / healthz_baseline)
            )
        };
        format!(
            "| {label} `/healthz` | {h:.0} | {} | {} | {} |\n\
             | {label} `/v1/routing` | {r:.0} | {} | {} | {} ({goals}) |\n",
            all(&self.healthz),
            ms(Self::p99(&self.healthz)),
            ratio(h, healthz_baseline),
            all(&self.routing),
            ms(routing_p99),
            ratio(r, healthz_baseline),
        )
    }
}

pub async fn run(sizes: &Sizes) -> anyhow::Result<String> {
    let dir = source_store("routing", sizes.docs, sizes.words).await?;
    let (idle, busy, backfill_note) =
        Server::serving(dir.path(), registry("hash-v1"), async |base| {
            measure(sizes, base).await
        })
        .await?;

    let baseline = Series::rps(&idle.healthz);
    let example = sizes.tool.command(
        sizes.connections,
        sizes.duration,
        Request::Get("http://ADDR/v1/routing"),
    );
    Ok(format!(
        "## Routing throughput\n\n`{example}` (and the same on `/healthz`), alternated \
         {} times per series, medians of the runs. The busy series runs while a migration to \
         `hash-v2` backfills {} documents of {} words (batch_size 1000, max_concurrent 4) in \
         the same process; {backfill_note}.\n\n\
         | series / path | median req/s | runs req/s | median p99 | ratio vs idle `/healthz` |\n\
         |---|---|---|---|---|\n{}{}",
        sizes.rounds,
        sizes.docs,
        sizes.words,
        idle.rows("idle", baseline),
        busy.rows("backfilling", baseline),
    ))
}

async fn measure(sizes: &Sizes, base: &str) -> anyhow::Result<(Series, Series, String)> {
    let start = CpuSample::now()?;
    let idle = Series::measure(sizes, base).await?;
    let idle_cpu = CpuSample::now()?.since(&start);
    super::start_migration(base, "bench-routing", "hash-v2", (1000, 4)).await?;
    let url = format!("{base}/v1/migrations/bench-routing/progress");
    let start = CpuSample::now()?;
    let (busy, progress) = Series::measure_while_backfilling(sizes, base, &url).await?;
    let busy_cpu = CpuSample::now()?.since(&start);
    let note = format!(
        "{} of {} busy rounds ran entirely during the backfill (a round during which it \
         completed is dropped); at the end the migration was `{}` with {} of {} documents \
         processed.\n\nWhere the server process's CPU went, by thread, in percent of one \
         core (the machine has {}%; the rest went to wrk and the kernel): idle rounds {}; \
         busy rounds {}. `tokio-rt-worker` threads serve requests and run the backfill's async \
         steps, `sqlx-sqlite-wor` run SQLite statements (the writer commits the backfill), \
         `reembed-backgro` embed the backfill at nice 10",
        busy.routing.len(),
        sizes.rounds,
        progress["state"].as_str().unwrap_or("?"),
        progress["processed"],
        progress["total"],
        100 * std::thread::available_parallelism().map_or(1, |n| n.get()),
        cpu::describe(&idle_cpu),
        cpu::describe(&busy_cpu),
    );
    Ok((idle, busy, note))
}
