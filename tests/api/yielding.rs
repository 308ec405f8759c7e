//! Requests first on this machine (API.md, progress `throttle_reason`): while requests keep the
//! server's CPU busy, the backfill yields most of its share of it (`server_busy`, metric
//! `reembed_backfill_cpu_share`), and takes it back once they stop.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use serde_json::json;
use tokio::task::JoinSet;

use crate::helpers::{Api, PATIENCE, TestApp, corpus, eventually};
use crate::probe::Probe;

/// Clients hammering the server: more than its two workers can serve without queueing.
const CLIENTS: usize = 32;
/// Enough documents at `PER_TEXT` to outlast both phases of the test.
const DOCUMENTS: usize = 6_000;
const PER_TEXT: Duration = Duration::from_millis(1);
/// How long either change may take: the controller moves every 250 ms, and a slow shared
/// machine may delay it.
const NOTICE: Duration = Duration::from_secs(20);

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_backfill_yields_cpu_to_busy_requests_and_takes_it_back_after() {
    let probe = Probe::new();
    let app = TestApp::with_models(probe.registry()).await;
    app.load(&corpus("y", DOCUMENTS), 1_000).await;
    probe.serve_serially(PER_TEXT);
    app.start_migration(&json!({"id": "yield", "target_model": "hash-v2",
                                "config": {"batch_size": 50, "max_concurrent": 2}}))
        .await;
    assert_eq!(app.progress("yield").await.throttle_reason, None);

    let stop = Arc::new(AtomicBool::new(false));
    let mut clients = JoinSet::new();
    for _ in 0..CLIENTS {
        let (api, stop) = ((*app).clone(), stop.clone());
        clients.spawn(async move { hammer(&api, &stop).await });
    }
    eventually(NOTICE, "the backfill to yield to requests", || async {
        let p = app.progress("yield").await;
        let share = cpu_share(&app).await;
        match (p.throttle_reason.as_deref(), share) {
            (Some("server_busy"), Some(share)) if share < 1.0 => Ok(()),
            _ => Err(format!("share {share:?}: {p:?}")),
        }
    })
    .await;
    stop.store(true, Ordering::Relaxed);
    let answered: u64 = clients.join_all().await.into_iter().sum();
    assert!(answered > 0);

    eventually(NOTICE, "the backfill to take its share back", || async {
        let p = app.progress("yield").await;
        match (p.state.as_str(), p.throttle_reason.as_deref()) {
            ("in_progress", None) => Ok(()),
            _ => Err(format!("{p:?}")),
        }
    })
    .await;
    let done = app.wait_for_state("yield", "completed", PATIENCE).await;
    assert_eq!(done.processed, DOCUMENTS as u64);
}

/// Requests `/healthz` until `stop`; returns how many were answered, each with 200.
async fn hammer(api: &Api, stop: &AtomicBool) -> u64 {
    let mut answered = 0;
    while !stop.load(Ordering::Relaxed) {
        assert_eq!(api.get("/healthz").await.status, 200);
        answered += 1;
    }
    answered
}

/// The `reembed_backfill_cpu_share` gauge of the migration, once the backfill has set it.
async fn cpu_share(api: &Api) -> Option<f64> {
    let metrics = api.get("/metrics").await.body;
    metrics
        .lines()
        .find_map(|line| line.strip_prefix(r#"reembed_backfill_cpu_share{migration="yield"} "#))
        .and_then(|value| value.trim().parse().ok())
}
