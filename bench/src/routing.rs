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

    /// The table rows of both paths; `goal` is the routing path's, as a ratio of the idle
    /// `/healthz` (the idle series also states the p99 goal).
    fn rows(&self, label: &str, healthz_baseline: f64, goal: Option<Goal>) -> String {
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
        let ratio_goal = goal.map(|goal| goal.verdict(r / healthz_baseline));
        let goals = match (label, ratio_goal) {
            ("idle", Some(verdict)) => format!(
                " (goal {verdict}; p99 ≤ {}: {})",
                ms(P99_GOAL),
                met(routing_p99 <= P99_GOAL),
            ),
            (_, Some(verdict)) => format!(" (goal {verdict} of idle `/healthz`)"),
            (_, None) => String::new(),
        };
        format!(
            "| {label} `/healthz` | {h:.0} | {} | {} | {} |\n\
             | {label} `/v1/routing` | {r:.0} | {} | {} | {}{goals} |\n",
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
    let (idle, yielding) = Server::serving(dir.path(), registry("hash-v1"), async |base| {
        let idle = Measured::idle(sizes, base).await?;
        let yielding = Measured::backfilling(sizes, base, "bench-routing").await?;
        Ok((idle, yielding))
    })
    .await?;
    drop(dir);
    let dir = source_store("routing-full-speed", sizes.docs, sizes.words).await?;
    let mut never_yields = reembed::Config::new(dir.path());
    never_yields.backfill_min_cpu_share = 1.0;
    let full_speed = Server::serving_with(never_yields, registry("hash-v1"), async |base| {
        Measured::backfilling(sizes, base, "bench-routing-full-speed").await
    })
    .await?;

    let baseline = Series::rps(&idle.series.healthz);
    let example = sizes.tool.command(
        sizes.connections,
        sizes.duration,
        Request::Get("http://ADDR/v1/routing"),
    );
    Ok(format!(
        "## Routing throughput\n\n`{example}` (and the same on `/healthz`), alternated \
         {} times per series, medians of the runs. The busy series run while a migration to \
         `hash-v2` backfills {} documents of {} words (batch_size 1000, max_concurrent 4) in \
         the same process: first with the defaults, where the backfill yields CPU to requests \
         that keep the server busy (down to 20% of its full speed, `domain::cpu_share`); then \
         on a fresh copy of the same corpus with `--backfill-min-cpu-percent 100`, where it \
         never yields (the baseline). A round during which a migration completed is dropped, since part of it \
         ran idle.\n\n\
         - {}\n- {}\n\n\
         Where the server process's CPU went, by thread, in percent of one core (the machine \
         has {}%; the rest went to wrk and the kernel): idle rounds {}; busy rounds {}; busy \
         rounds, never yielding, {}. `tokio-rt-worker` threads serve requests and run the \
         backfill's async steps, `sqlx-sqlite-wor` run SQLite statements (the writer commits \
         the backfill), `reembed-backgro` embed the backfill at nice 10.\n\n\
         | series / path | median req/s | runs req/s | median p99 | ratio vs idle `/healthz` |\n\
         |---|---|---|---|---|\n{}{}{}",
        sizes.rounds,
        sizes.docs,
        sizes.words,
        yielding.note(sizes, "yielding"),
        full_speed.note(sizes, "never yielding"),
        100 * std::thread::available_parallelism().map_or(1, |n| n.get()),
        cpu::describe(&idle.cpu),
        cpu::describe(&yielding.cpu),
        cpu::describe(&full_speed.cpu),
        idle.series.rows("idle", baseline, Some(Goal::AtLeast(0.9))),
        yielding
            .series
            .rows("backfilling", baseline, Some(Goal::AtLeast(0.8))),
        full_speed
            .series
            .rows("backfilling, never yielding", baseline, None),
    ))
}

/// One series with where the server's CPU went during it, and the migration's progress after.
struct Measured {
    series: Series,
    cpu: Vec<(String, f64)>,
    progress: serde_json::Value,
}

impl Measured {
    async fn idle(sizes: &Sizes, base: &str) -> anyhow::Result<Measured> {
        let start = CpuSample::now()?;
        let series = Series::measure(sizes, base).await?;
        Ok(Measured {
            series,
            cpu: CpuSample::now()?.since(&start),
            progress: serde_json::Value::Null,
        })
    }

    /// Starts migration `id` and measures while it backfills.
    async fn backfilling(sizes: &Sizes, base: &str, id: &str) -> anyhow::Result<Measured> {
        super::start_migration(base, id, "hash-v2", (1000, 4)).await?;
        let url = format!("{base}/v1/migrations/{id}/progress");
        let start = CpuSample::now()?;
        let (series, progress) = Series::measure_while_backfilling(sizes, base, &url).await?;
        Ok(Measured {
            series,
            cpu: CpuSample::now()?.since(&start),
            progress,
        })
    }

    fn note(&self, sizes: &Sizes, label: &str) -> String {
        format!(
            "{label}: {} of {} busy rounds ran entirely during the backfill; after them the \
             migration was `{}` with {} of {} documents processed",
            self.series.routing.len(),
            sizes.rounds,
            self.progress["state"].as_str().unwrap_or("?"),
            self.progress["processed"],
            self.progress["total"],
        )
    }
}
