//! Honest progress (API.md, progress): throughput over a sliding window of wall-clock time,
//! embedding time included, and the ETA that follows from it, against a provider of fixed speed.

use std::time::{Duration, Instant};

use serde_json::json;

use crate::helpers::{PATIENCE, TestApp, corpus};
use crate::probe::Probe;

/// The fixed speed of the provider: one text every 5 ms, 200 documents per second, so the
/// first 10% take more than the second a rate needs.
const PER_TEXT: Duration = Duration::from_millis(5);
const DOCUMENTS: usize = 2_400;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn throughput_and_eta_follow_a_provider_of_fixed_speed() {
    let probe = Probe::new();
    let app = TestApp::with_models(probe.registry()).await;
    app.load(&corpus("p", DOCUMENTS), 500).await;
    probe.serve_serially(PER_TEXT);
    let true_rate = 1.0 / PER_TEXT.as_secs_f64();

    app.start_migration(&json!({"id": "speed", "target_model": "hash-v2",
                                "config": {"batch_size": 50, "max_concurrent": 4}}))
        .await;
    let first = app.progress("speed").await;
    assert_eq!(
        (first.throughput_per_sec, first.eta_secs),
        (None, None),
        "nothing to estimate from yet: {first:?}"
    );

    // The rate counts from the start, so the first claims and commits weigh on it early on:
    // on PostgreSQL, a few round trips each to a database that shares this machine's two
    // cores with the tests, about a quarter of the first 10% on a loaded run.
    let from = if crate::store::on_postgres() {
        0.2
    } else {
        0.1
    };
    let deadline = Instant::now() + PATIENCE;
    let mut checked = 0;
    loop {
        let p = app.progress("speed").await;
        if p.state == "completed" {
            break;
        }
        let done = p.processed as f64 / p.total as f64;
        if (from..0.8).contains(&done) {
            let rate = p.throughput_per_sec.expect("a rate after 10%");
            assert!(
                (rate / true_rate - 1.0).abs() <= 0.3,
                "{rate:.0} docs/s against a true {true_rate:.0}: {p:?}"
            );
            let eta = p.eta_secs.expect("an ETA while the rate is known");
            let true_eta = p.remaining as f64 / true_rate;
            assert!(
                (eta / true_eta - 1.0).abs() <= 0.3,
                "ETA {eta:.1} s against a true {true_eta:.1} s: {p:?}"
            );
            checked += 1;
        }
        assert!(Instant::now() < deadline, "not completed: {p:?}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert!(
        checked >= 10,
        "only {checked} samples between {from} and 80%"
    );
}
