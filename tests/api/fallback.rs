//! The target's provider down during the rollback window (API.md query `reason: fallback`,
//! the rollback window's repairs): queries answer from the source, which is complete and still
//! written; writes are accepted on the source and queued for repair; the window cannot end
//! before the repairs are done, so both rollback and cut-over stay lossless.

use std::time::{Duration, Instant};

use serde_json::json;

use crate::fake_openai::{FakeOpenAi, MODEL};
use crate::helpers::{PATIENCE, TestApp, corpus, eventually};
use crate::wire::{QueryResult, Written};

/// A migration to the fake provider, completed with an hour of rollback window, and the
/// provider then down.
async fn in_the_window_with_the_target_down() -> (FakeOpenAi, TestApp) {
    let fake = FakeOpenAi::start().await;
    let app = TestApp::with_models(fake.registry("hash-v1", "")).await;
    app.load(&corpus("doc", 30), 100).await;
    let config = json!({ "batch_size": 10, "rollback_window_secs": 3600 });
    let body = json!({ "id": "window", "target_model": MODEL, "config": config });
    app.start_migration(&body).await;
    app.wait_for_state("window", "completed", PATIENCE).await;
    fake.go_down(None);
    (fake, app)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_query_with_the_target_down_answers_from_the_source_at_once() {
    let (_fake, app) = in_the_window_with_the_target_down().await;
    for _ in 0..3 {
        let started = Instant::now();
        let answer: QueryResult = app.query("document number 7", 3).await;
        assert_eq!(
            (
                answer.reason.as_str(),
                answer.route.as_str(),
                answer.model.as_str()
            ),
            ("fallback", "legacy", "hash-v1"),
            "{answer:?}"
        );
        assert_eq!(answer.phase, "rollback_window");
        assert_eq!(answer.hits.len(), 3, "the source index answers: {answer:?}");
        assert!(
            started.elapsed() < Duration::from_secs(2),
            "the fallback does not wait out the retries: {:?}",
            started.elapsed()
        );
    }
    let metrics = app.get("/metrics").await.body;
    assert!(
        metrics.contains("reembed_query_fallbacks_total"),
        "fallbacks are counted"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_dual_write_with_the_target_down_is_repaired_and_holds_the_window_until_then() {
    let (fake, app) = in_the_window_with_the_target_down().await;
    let written: Written = app
        .put_document("late", "written while the target was down")
        .await;
    assert_eq!(written.embedded_with, ["hash-v1"], "{written:?}");
    assert_eq!(written.write_route, "dual_write");
    let progress = app.progress("window").await;
    assert_eq!(
        (progress.total, progress.remaining),
        (31, 1),
        "{progress:?}"
    );

    let refused = app.action("window", "finalize").await;
    let problem = refused.problem(409, "invalid-transition");
    assert!(problem.detail().contains("1 documents"), "{refused}");
    assert_eq!(app.routing().await.phase, "rollback_window");

    fake.recover();
    eventually(PATIENCE, "the repair", || async {
        let doc = app.get_document("late").await;
        doc.is_current_in(MODEL)
            .then_some(())
            .ok_or(format!("{doc:?}"))
    })
    .await;
    let repaired = app.progress("window").await;
    assert_eq!(
        (repaired.total, repaired.processed, repaired.remaining),
        (31, 31, 0),
        "{repaired:?}"
    );
    app.action("window", "finalize")
        .await
        .ok::<serde_json::Value>();
    assert_eq!(app.models().await.active_model, MODEL);
    let found: QueryResult = app.query("written while the target was down", 1).await;
    assert_eq!(
        (found.model.as_str(), found.hits[0].id.as_str()),
        (MODEL, "late")
    );
}
