//! Graceful shutdown is bounded (README: within 10 s plus one batch commit): an open event
//! feed ends when shutdown begins, and a backfill batch still waiting for its provider is
//! abandoned; its documents stay queued, and the next start embeds them, counted once.

use std::time::{Duration, Instant};

use serde_json::json;

use crate::backfill::follow_to_completion;
use crate::fake_openai::{FakeOpenAi, HELD, MODEL};
use crate::helpers::{PATIENCE, TestApp};
use crate::providers::{assert_all_current_in_fake, counts, marked};

/// Well under the 10 s that shutdown gives slow requests: a shutdown that waited for the
/// held provider or for the feed would take at least that.
const PROMPT: Duration = Duration::from_secs(5);

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn shutdown_ends_event_feeds_and_abandons_batches_waiting_for_the_provider() {
    let fake = FakeOpenAi::start().await;
    let app = TestApp::with_models(fake.registry("hash-v1", "")).await;
    let docs = marked("doc", 60, HELD);
    app.load(&docs, 60).await;
    fake.hold();
    let config = json!({ "batch_size": 20, "max_concurrent": 2 });
    let body = json!({ "id": "stopped", "target_model": MODEL, "config": config });
    app.start_migration(&body).await;
    fake.until_held(PATIENCE).await;

    let mut feed = reqwest::get(format!("{}/v1/migrations/stopped/events", app.base))
        .await
        .expect("the feed");
    assert_eq!(feed.status(), 200);
    let feed_ended = tokio::spawn(async move {
        while let Ok(Some(_)) = feed.chunk().await {}
        Instant::now()
    });

    let asked = Instant::now();
    let dir = app.stop().await;
    let stopped = asked.elapsed();
    assert!(stopped < PROMPT, "shutdown took {stopped:?}");
    let feed_ended = tokio::time::timeout(PROMPT, feed_ended)
        .await
        .expect("the feed ended with the server")
        .expect("the reader did not panic");
    assert!(feed_ended.duration_since(asked) < PROMPT);

    fake.release();
    let app = TestApp::spawn_in(dir, fake.registry("hash-v1", "")).await;
    let done = follow_to_completion(&app, "stopped", PATIENCE).await;
    assert_eq!(counts(&done), (60, 60, 0, 0), "{done:?}");
    assert_eq!(assert_all_current_in_fake(&app).await, 60);
    app.stop().await;
}
