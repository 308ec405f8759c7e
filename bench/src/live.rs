//! Live traffic during a backfill, against a provider that serves one request at a time in
//! arrival order (`serial_provider`, like infinity or TEI on one device): `PUT` and
//! target-routed query latency with the migration paused (the same provider, idle) and while
//! the backfill runs, and the backfill's documents/s as a share of the provider's capacity that
//! live traffic leaves. Measured at the default config and with large batches.

use std::time::{Duration, Instant};

use anyhow::Context;
use reembed::embed::ModelRegistry;
use serde_json::{Value, json};

use reembed::embed::builtin::HashEmbedder;

use super::serial_provider::{Outcome, Request, SerialProvider, Settings, Speed, text};
use super::stats::{Goal, ms, percentile};
use super::{ScratchDir, Server, fill_store, migration_action, progress};

/// The model's `interactive_latency_budget_ms`, the default.
const BUDGET: Duration = Duration::from_millis(250);
const MODEL: &str = "serial";
const DIMENSIONS: usize = 64;
const MIGRATION: &str = "bench-live";
/// Characters per live text: 5 ms of service each; corpus texts are about as long.
const TEXT_CHARS: usize = 250;
const CORPUS_WORDS: usize = 50;
/// Live texts start with this; the provider's log tells them from the corpus by it.
const LIVE: &str = "live";
/// Pause between one client's rounds (a write, then a query).
const THINK: Duration = Duration::from_millis(25);

pub struct Sizes {
    docs: usize,
    idle_rounds: usize,
}

impl Sizes {
    pub fn new(smoke: bool) -> Self {
        if smoke {
            Sizes {
                docs: 200,
                idle_rounds: 5,
            }
        } else {
            Sizes {
                docs: 4_000,
                idle_rounds: 100,
            }
        }
    }
}

fn speed() -> Speed {
    Speed {
        per_request: Duration::from_millis(1),
        per_char: Duration::from_micros(20),
    }
}

/// One scenario: the migration config, the model's `max_batch`, and whether the adaptive
/// controller runs (off, the backfill runs at the configured bounds: the baseline).
struct Scenario {
    name: &'static str,
    config: &'static str,
    max_batch: usize,
    controller: bool,
}

const LARGE: &str = r#"{"batch_size": 256, "max_concurrent": 4, "target_query_threshold": 0.0}"#;

const SCENARIOS: [Scenario; 3] = [
    Scenario {
        name: "defaults (100 / 4, max_batch 32)",
        config: r#"{"target_query_threshold": 0.0}"#,
        max_batch: 32,
        controller: true,
    },
    Scenario {
        name: "large batches (256 / 4, max_batch 256)",
        config: LARGE,
        max_batch: 256,
        controller: true,
    },
    Scenario {
        name: "large batches, controller off (budget 0)",
        config: LARGE,
        max_batch: 256,
        controller: false,
    },
];

pub async fn run(sizes: &Sizes) -> anyhow::Result<String> {
    let mut out = String::from("## Live traffic during a backfill\n\n");
    out.push_str(&format!(
        "One client sends a `PUT` (dual write) then a query routed to the target, every {} ms, \
         against a provider serving one request at a time in arrival order ({} ms + {} µs per \
         character; texts of about {TEXT_CHARS} characters; {} documents). Idle: the migration paused, \
         same provider. Budget: `interactive_latency_budget_ms` = {}.\n\n",
        THINK.as_millis(),
        speed().per_request.as_millis(),
        speed().per_char.as_micros(),
        sizes.docs,
        BUDGET.as_millis()
    ));
    out.push_str(
        "| config | request | p50 idle | p99 idle | p50 during | p99 during | p99 during − idle vs budget | goal |\n|---|---|---|---|---|---|---|---|\n",
    );
    let mut throughput = String::from(
        "\n| config | backfill docs/s | capacity live traffic left | ratio | goal |\n|---|---|---|---|---|\n",
    );
    for scenario in SCENARIOS {
        let name = scenario.name;
        let measured = measure_scenario(sizes, &scenario).await?;
        let verdict = |goal: Goal, ratio| {
            if scenario.controller {
                goal.verdict(ratio)
            } else {
                "baseline".to_owned()
            }
        };
        for (what, idle, during) in [
            ("PUT", &measured.idle.puts, &measured.during.puts),
            ("query", &measured.idle.queries, &measured.during.queries),
        ] {
            let (idle_p99, during_p99) = (percentile(idle, 99.0), percentile(during, 99.0));
            let extra = during_p99.saturating_sub(idle_p99).as_secs_f64() / BUDGET.as_secs_f64();
            out.push_str(&format!(
                "| {name} | {what} | {} | {} | {} | {} | {extra:.2}× | {} |\n",
                ms(percentile(idle, 50.0)),
                ms(idle_p99),
                ms(percentile(during, 50.0)),
                ms(during_p99),
                verdict(Goal::AtMost(1.0), extra),
            ));
        }
        let share = measured.rate / measured.left;
        throughput.push_str(&format!(
            "| {name} | {:.0} | {:.0} | {share:.2}× | {} |\n",
            measured.rate,
            measured.left,
            verdict(Goal::AtLeast(0.8), share)
        ));
    }
    out.push_str(&throughput);
    Ok(out)
}

/// Latencies of one phase.
#[derive(Default)]
struct Phase {
    puts: Vec<Duration>,
    queries: Vec<Duration>,
}

struct Measured {
    idle: Phase,
    during: Phase,
    /// Backfill documents per second while it ran.
    rate: f64,
    /// Documents per second the provider could still compute besides the live requests.
    left: f64,
}

async fn measure_scenario(sizes: &Sizes, scenario: &Scenario) -> anyhow::Result<Measured> {
    let config: Value = serde_json::from_str(scenario.config)?;
    let provider = SerialProvider::start(Settings {
        dimensions: DIMENSIONS,
        speed: speed(),
    })
    .await?;
    let dir = ScratchDir::new()?;
    let hash_v1 = HashEmbedder::hash_v1();
    fill_store(
        "live",
        dir.path(),
        sizes.docs,
        CORPUS_WORDS,
        "hash-v1",
        &hash_v1,
    )
    .await?;
    let budget_ms = if scenario.controller {
        BUDGET.as_millis()
    } else {
        0
    };
    let models = registry(&provider, scenario.max_batch, budget_ms)?;
    Server::serving(dir.path(), models, async |base: &str| {
        measure(base, sizes, config, &provider).await
    })
    .await
}

async fn measure(
    base: &str,
    sizes: &Sizes,
    config: Value,
    provider: &SerialProvider,
) -> anyhow::Result<Measured> {
    let client = reqwest::Client::new();
    let body = json!({ "id": MIGRATION, "target_model": MODEL, "config": config });
    let created = client
        .post(format!("{base}/v1/migrations"))
        .json(&body)
        .send()
        .await?;
    anyhow::ensure!(created.status() == 201, "create: {}", created.text().await?);
    migration_action(base, MIGRATION, "pause").await?;
    while progress(base, MIGRATION).await?["in_flight_batches"] != 0 {
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let mut idle = Phase::default();
    for n in 0..sizes.idle_rounds {
        round(&client, base, n, &mut idle).await?;
    }
    migration_action(base, MIGRATION, "resume").await?;
    let resumed = Instant::now();
    let before = processed(&progress(base, MIGRATION).await?);
    let mut during = Phase::default();
    let mut n = sizes.idle_rounds;
    let mut last = progress(base, MIGRATION).await?;
    while last["state"] == "in_progress" {
        round(&client, base, n, &mut during).await?;
        n += 1;
        last = progress(base, MIGRATION).await?;
    }
    let elapsed = resumed.elapsed().as_secs_f64();
    let log = provider.requests();
    let served = |live: bool| {
        log.iter()
            .filter(move |r| r.arrived >= resumed && r.head.starts_with(LIVE) == live)
            .filter(|r| r.outcome == Outcome::Embedded)
    };
    let busy = |requests: &mut dyn Iterator<Item = &Request>| -> f64 {
        requests.map(|r| (r.ended - r.started).as_secs_f64()).sum()
    };
    // The provider's own capacity: backfill documents per second of its busy time.
    let backfill_docs: usize = served(false).map(|r| r.inputs).sum();
    let capacity = backfill_docs as f64 / busy(&mut served(false));
    let live_busy = busy(&mut served(true));
    Ok(Measured {
        idle,
        during,
        rate: (processed(&last) - before) as f64 / elapsed,
        left: capacity * (1.0 - live_busy / elapsed),
    })
}

/// One live round: a dual write, then a query routed to the target; each must be 200.
async fn round(
    client: &reqwest::Client,
    base: &str,
    n: usize,
    phase: &mut Phase,
) -> anyhow::Result<()> {
    let started = Instant::now();
    let put = client
        .put(format!("{base}/v1/documents/live-{n}"))
        .json(&json!({ "text": text(LIVE, n, TEXT_CHARS) }))
        .send()
        .await?;
    anyhow::ensure!(put.status() == 200, "PUT: {}", put.text().await?);
    phase.puts.push(started.elapsed());
    let started = Instant::now();
    let query = client
        .post(format!("{base}/v1/query"))
        .json(&json!({ "text": text(LIVE, n + 1_000_000, TEXT_CHARS), "top_k": 3 }))
        .send()
        .await?;
    anyhow::ensure!(query.status() == 200, "query: {}", query.text().await?);
    phase.queries.push(started.elapsed());
    tokio::time::sleep(THINK).await;
    Ok(())
}

fn processed(progress: &Value) -> u64 {
    progress["processed"].as_u64().unwrap_or(0)
}

/// hash-v1 (active) and the provider's model, with the controller aiming at `budget_ms` (0:
/// off).
fn registry(
    provider: &SerialProvider,
    max_batch: usize,
    budget_ms: u128,
) -> anyhow::Result<ModelRegistry> {
    let budget = format!("interactive_latency_budget_ms = {budget_ms}");
    let toml = provider.registry_toml(MODEL, DIMENSIONS, max_batch, &budget);
    ModelRegistry::from_toml_str(&toml, &|_| None).context("the live benchmark's registry")
}
