//! Provider outages (API.md progress `waiting`, `failed`): a backfill waits a transient outage
//! out and completes by itself; only an outage longer than `--provider-patience-secs` fails the
//! migration, and resume then finishes it. `failed` counts the documents still waiting after a
//! failed attempt, so it ends at 0.

use std::time::{Duration, Instant};

use serde_json::json;

use crate::backfill::follow_to_completion;
use crate::fake_openai::{FakeOpenAi, HELD, MODEL};
use crate::helpers::{PATIENCE, TestApp};
use crate::providers::{assert_all_current_in_fake, assert_embedded_once, counts, marked};
use crate::wire::Migration;

/// How long the provider stays down in the outage that is waited out.
const OUTAGE: Duration = Duration::from_secs(20);

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_provider_down_for_twenty_seconds_is_waited_out_and_the_migration_completes() {
    let fake = FakeOpenAi::start().await;
    let app = TestApp::with_models(fake.registry("hash-v1", "")).await;
    let docs = marked("doc", 200, HELD);
    app.load(&docs, 100).await;
    fake.hold();
    let config = json!({ "batch_size": 20, "max_concurrent": 4 });
    let body = json!({ "id": "restart", "target_model": MODEL, "config": config });
    app.start_migration(&body).await;

    // A restart: every request is refused while it lasts, with no hint when it ends.
    fake.go_down(None);
    fake.release();
    let down_since = Instant::now();
    let mut saw_waiting = None;
    let mut most_failed = 0;
    while down_since.elapsed() < OUTAGE {
        let p = app.progress("restart").await;
        assert_eq!(
            p.state, "in_progress",
            "an outage within the patience: {p:?}"
        );
        most_failed = most_failed.max(p.failed);
        if let Some(waiting) = &p.waiting {
            assert_eq!(waiting.model, MODEL, "{p:?}");
            assert!(waiting.last_error.contains("503"), "{p:?}");
            saw_waiting.get_or_insert(waiting.since);
        }
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
    let since = saw_waiting.expect("progress shows what the backfill waits for");
    assert!(since <= chrono::Utc::now(), "{since}");
    assert!(
        most_failed > 0,
        "documents whose attempt failed are counted"
    );
    let page = app.get("/").await.body;
    assert!(
        page.contains("Waiting for the provider of"),
        "the status page says it in words"
    );

    fake.recover();
    let done = follow_to_completion(&app, "restart", PATIENCE).await;
    assert_eq!(counts(&done), (200, 200, 0, 0), "{done:?}");
    assert_eq!(
        done.failed, 0,
        "every failed document succeeded since: {done:?}"
    );
    assert!(done.waiting.is_none(), "{done:?}");
    assert!(app.migration("restart").await.error.is_none());
    assert_eq!(assert_all_current_in_fake(&app).await, 200);
    assert_embedded_once(&fake, &docs);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_provider_down_longer_than_the_patience_fails_the_migration_and_resume_finishes_it() {
    let fake = FakeOpenAi::start().await;
    let models = fake.registry("hash-v1", "");
    let patience = Duration::from_secs(2);
    let app = TestApp::with_config(models, |config| config.provider_patience = patience).await;
    let docs = marked("doc", 40, HELD);
    app.load(&docs, 100).await;
    fake.hold();
    let config = json!({ "batch_size": 10, "max_concurrent": 1 });
    let body = json!({ "id": "outage", "target_model": MODEL, "config": config });
    app.start_migration(&body).await;

    // Down for an hour, as its Retry-After says: each request gives up at once, and the
    // backfill waits until the patience has passed.
    fake.go_down(Some(3600));
    fake.release();
    let started = Instant::now();
    let failed = app.wait_for_state("outage", "failed", PATIENCE).await;
    assert!(
        started.elapsed() >= patience,
        "failed before the patience ran out"
    );
    assert_eq!(failed.processed, 0, "{failed:?}");
    assert!(
        failed.failed >= 10,
        "at least one failed batch of 10: {failed:?}"
    );
    assert!(failed.failed <= 40, "each document counts once: {failed:?}");
    let migration = app.migration("outage").await;
    let error = migration.error.expect("a failed migration says why");
    assert!(
        error.contains("503") && error.contains("patience"),
        "{error}"
    );
    let routing = app.routing().await;
    assert_eq!(
        (routing.phase.as_str(), routing.query_model.as_str()),
        ("stable", "hash-v1"),
        "a failed migration routes to the source"
    );

    fake.recover();
    let resumed: Migration = app.action("outage", "resume").await.ok();
    assert_eq!(resumed.state, "in_progress");
    let done = follow_to_completion(&app, "outage", PATIENCE).await;
    assert_eq!(counts(&done), (40, 40, 0, 0), "{done:?}");
    assert_eq!(done.failed, 0, "{done:?}");
    assert_eq!(assert_all_current_in_fake(&app).await, 40);
    assert_embedded_once(&fake, &docs);
    assert!(app.migration("outage").await.completed_at.is_some());
}
