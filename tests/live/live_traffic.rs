//! Live traffic ahead of the backfill at a provider that serves one request at a time in
//! arrival order (`serial_provider`), as self-hosted embedding servers do: with a backfill
//! running, writes and target-routed queries stay within their idle latency plus the model's
//! `interactive_latency_budget_ms`, none is refused, and the backfill still gets most of the
//! provider's capacity that live traffic leaves.
//!
//! Latency is what these tests assert, so they run in a test binary of their own
//! (`tests/live.rs`), which cargo runs alone, one scenario at a time.

use std::time::{Duration, Instant};

use reembed::embed::ModelRegistry;
use serde_json::json;

use crate::helpers::{PATIENCE, TestApp, eventually};
use crate::serial_provider::{Request, SerialProvider, Settings, Speed, text};
use crate::wire::{Progress, QueryResult};

/// The registry id of the provider's model.
const MODEL: &str = "serial";
const DIMENSIONS: usize = 64;
/// The extra latency the backfill may add to live requests (the default budget).
const BUDGET: Duration = Duration::from_millis(250);
/// Every corpus text starts with this, every live text with `LIVE`, so the provider's log
/// tells the lanes apart.
const CORPUS: &str = "corpus";
const LIVE: &str = "live";
/// Characters per text: 5 ms of service each at 20 µs a character.
const TEXT_CHARS: usize = 250;
const DOCUMENTS: usize = 1_500;

fn speed() -> Speed {
    Speed {
        per_request: Duration::from_millis(1),
        per_char: Duration::from_micros(20),
    }
}

fn registry(provider: &SerialProvider, max_batch: usize) -> ModelRegistry {
    let budget = format!("interactive_latency_budget_ms = {}", BUDGET.as_millis());
    let toml = provider.registry_toml(MODEL, DIMENSIONS, max_batch, &budget);
    ModelRegistry::from_toml_str(&toml, &|_| None).expect("a valid registry")
}

/// Latencies of one kind of live request.
#[derive(Debug, Default)]
struct Latencies(Vec<Duration>);

impl Latencies {
    fn p99(&self) -> Duration {
        let mut sorted = self.0.clone();
        sorted.sort_unstable();
        sorted[(sorted.len() * 99).div_ceil(100) - 1]
    }
}

/// Live traffic of one client: a write, then a query routed to the target, every 25 ms.
#[derive(Debug, Default)]
struct Live {
    puts: Latencies,
    queries: Latencies,
}

impl Live {
    /// Sends one write and one query; both must be answered 200 by the target-side routing.
    async fn round(&mut self, app: &TestApp, n: usize) {
        let started = Instant::now();
        let reply = app
            .put_document_reply(
                &format!("live-{n}"),
                &json!({ "text": text(LIVE, n, TEXT_CHARS) }),
            )
            .await;
        assert_eq!(reply.status, 200, "a live write was refused: {reply}");
        self.puts.0.push(started.elapsed());
        let started = Instant::now();
        let reply = app
            .query_reply(&json!({
                "text": text(LIVE, n + 1_000_000, TEXT_CHARS),
                "top_k": 3
            }))
            .await;
        assert_eq!(reply.status, 200, "a live query was refused: {reply}");
        self.queries.0.push(started.elapsed());
        let answer: QueryResult = reply.ok();
        assert_eq!(answer.model, MODEL, "queries are routed to the target");
        tokio::time::sleep(Duration::from_millis(25)).await;
    }
}

/// The provider's busy time serving `requests` (one worker, so busy times add up).
fn busy(requests: &[&Request]) -> Duration {
    requests.iter().map(|r| r.ended - r.started).sum()
}

/// One scenario at a time: each measures latency, which a second one would disturb.
static ONE_AT_A_TIME: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

/// Runs the scenario with the migration config `config` and `max_batch` inputs per request.
async fn live_traffic_stays_within_the_budget(config: serde_json::Value, max_batch: usize) {
    let _alone = ONE_AT_A_TIME.lock().await;
    let provider = SerialProvider::start(Settings {
        dimensions: DIMENSIONS,
        speed: speed(),
    })
    .await
    .expect("the provider starts");
    let app = TestApp::with_models(registry(&provider, max_batch)).await;
    let corpus: Vec<(String, String)> = (0..DOCUMENTS)
        .map(|n| (format!("doc-{n:05}"), text(CORPUS, n, TEXT_CHARS)))
        .collect();
    app.load(&corpus, 500).await;

    // Queries go to the target from the start; the migration waits paused while idle
    // latencies are measured against the same provider.
    let mut config = config;
    config["target_query_threshold"] = json!(0.0);
    let body = json!({ "id": "live", "target_model": MODEL, "config": config });
    app.start_migration(&body).await;
    app.action("live", "pause").await.ok::<serde_json::Value>();
    eventually(PATIENCE, "the paused backfill to drain", || async {
        let p = app.progress("live").await;
        (p.in_flight_batches == 0)
            .then_some(())
            .ok_or(format!("{p:?}"))
    })
    .await;
    let mut idle = Live::default();
    for n in 0..40 {
        idle.round(&app, n).await;
    }

    app.action("live", "resume").await.ok::<serde_json::Value>();
    let resumed_at = Instant::now();
    let before: Progress = app.progress("live").await;
    let mut during = Live::default();
    let mut n = 1_000;
    let mut last = before.clone();
    while last.state == "in_progress" && last.remaining > 0 {
        during.round(&app, n).await;
        n += 1;
        last = app.progress("live").await;
    }
    let elapsed = resumed_at.elapsed();
    let backfilled = last.processed - before.processed;

    let log = provider.requests();
    let slowest_at_provider = log
        .iter()
        .filter(|r| r.head.starts_with(LIVE) && r.arrived >= resumed_at)
        .map(|r| r.ended - r.arrived)
        .max()
        .unwrap_or_default();
    for (what, idle, during) in [
        ("PUT", &idle.puts, &during.puts),
        ("query", &idle.queries, &during.queries),
    ] {
        let (idle_p99, during_p99) = (idle.p99(), during.p99());
        // Loosely: the budget bounds the backfill's work queued at the provider; a debug
        // build on a shared machine adds its own hiccups to the slowest request.
        assert!(
            during_p99 <= idle_p99 + BUDGET * 2,
            "{what} p99 {during_p99:?} during the backfill, {idle_p99:?} idle, budget {BUDGET:?}; \
             the slowest live request took {slowest_at_provider:?} at the provider"
        );
    }

    // The capacity live traffic left: the provider's time not spent on live requests.
    let served: Vec<&Request> = log.iter().filter(|r| r.started >= r.arrived).collect();
    let live_busy = busy(
        &served
            .iter()
            .copied()
            .filter(|r| r.head.starts_with(LIVE) && r.arrived >= resumed_at)
            .collect::<Vec<_>>(),
    );
    let capacity = speed().docs_per_second(TEXT_CHARS, max_batch.min(256));
    let left = capacity * (1.0 - live_busy.as_secs_f64() / elapsed.as_secs_f64());
    let rate = backfilled as f64 / elapsed.as_secs_f64();
    assert!(
        rate >= 0.7 * left,
        "the backfill made {rate:.0} docs/s of the {left:.0} live traffic left (capacity \
         {capacity:.0}); last progress {last:?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn at_the_default_config_live_traffic_barely_notices_the_backfill() {
    live_traffic_stays_within_the_budget(json!({}), 32).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn with_large_batches_live_traffic_barely_notices_the_backfill() {
    let config = json!({ "batch_size": 256, "max_concurrent": 4 });
    live_traffic_stays_within_the_budget(config, 256).await;
}
