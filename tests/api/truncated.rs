//! Long inputs are visible (issue 10): a document longer than its model's `max_input_tokens`
//! is still embedded (the server truncates it) but flagged, in `GET /v1/documents/{id}`, in
//! the migration's progress `truncated` and in `/metrics`.

use std::time::Duration;

use serde_json::json;

use crate::backfill::follow_to_completion;
use crate::fake_openai::{FakeOpenAi, HELD, MODEL};
use crate::helpers::{PATIENCE, TestApp};
use crate::operating::sample;
use crate::providers::{assert_all_current_in_fake, assert_embedded_once};

/// The fake's limit in these tests: 8 tokens are 32 characters (characters / 4).
const LIMIT: &str = "max_input_tokens = 8";

/// A text of 33 characters or more, over `LIMIT`.
fn long(i: usize) -> String {
    format!("document {i} runs on well past the limit of eight tokens")
}

/// A text of at most 32 characters, within `LIMIT`.
fn short(i: usize) -> String {
    format!("document {i}")
}

/// `n` documents `{prefix}-{i}`, every third one long.
fn mixed(prefix: &str, n: usize) -> Vec<(String, String)> {
    (0..n)
        .map(|i| {
            let text = if i % 3 == 0 { long(i) } else { short(i) };
            (format!("{prefix}-{i:03}"), text)
        })
        .collect()
}

fn is_long(text: &str) -> bool {
    text.chars().count() > 32
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn long_documents_are_embedded_flagged_and_counted() {
    let fake = FakeOpenAi::start().await;
    let app = TestApp::with_models(fake.registry("hash-v1", LIMIT)).await;
    let docs = mixed("doc", 30);
    let longs = docs.iter().filter(|(_, text)| is_long(text)).count() as u64;
    assert_eq!(longs, 10);
    app.load(&docs, 100).await;
    for (id, _) in &docs[..2] {
        let before = app.get_document(id).await;
        assert!(!before.truncated, "hash-v1 has no input limit: {before:?}");
    }

    let config = json!({ "batch_size": 7, "max_concurrent": 2 });
    let body = json!({ "id": "long-inputs", "target_model": MODEL, "config": config });
    app.start_migration(&body).await;
    let done = follow_to_completion(&app, "long-inputs", PATIENCE).await;

    assert_eq!((done.total, done.processed, done.skipped), (30, 30, 0));
    assert_eq!(done.truncated, longs, "{done:?}");
    assert_embedded_once(&fake, &docs);
    assert_eq!(assert_all_current_in_fake(&app).await, 30);
    for (id, text) in &docs {
        let document = app.get_document(id).await;
        assert_eq!(document.truncated, is_long(text), "{document:?}");
    }
    let listed = app.all_documents(8).await;
    let flagged = listed.iter().filter(|d| d.truncated).count() as u64;
    assert_eq!(flagged, longs, "the list flags them as the document does");

    let metrics = app.get("/metrics").await.body;
    let migration = ["migration=\"long-inputs\""];
    let gauge = sample(&metrics, "reembed_migration_truncated", &migration);
    assert_eq!(gauge, Some(longs as f64), "{metrics}");
    let model = [r#"model="fake-small""#];
    let inputs = sample(&metrics, "reembed_embed_truncated_inputs_total", &model);
    assert!(inputs >= Some(longs as f64), "{inputs:?} in:\n{metrics}");
    app.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_dual_write_of_a_queued_long_document_counts_it_once() {
    let fake = FakeOpenAi::start().await;
    let app = TestApp::with_models(fake.registry("hash-v1", LIMIT)).await;
    // The first batch carries the `HELD` marker and waits at the fake; the last document sorts
    // after every batch that can be in flight, so it is still queued when it is rewritten.
    let mut docs: Vec<(String, String)> = mixed("a", 10)
        .into_iter()
        .map(|(id, text)| (id, format!("{HELD} {text}")))
        .collect();
    docs.push(("z-last".to_owned(), short(99)));
    app.load(&docs, 100).await;
    fake.hold();
    let config = json!({ "batch_size": 10, "max_concurrent": 1 });
    let body = json!({ "id": "dual-long", "target_model": MODEL, "config": config });
    app.start_migration(&body).await;
    fake.until_held(Duration::from_secs(30)).await;

    let written = app.put_document("z-last", &long(99)).await;
    assert!(
        written.embedded_with.iter().any(|m| m == MODEL),
        "{written:?}"
    );
    let during = app.progress("dual-long").await;
    assert_eq!((during.processed, during.truncated), (1, 1), "{during:?}");
    fake.release();
    let done = follow_to_completion(&app, "dual-long", PATIENCE).await;

    let longs = docs.iter().filter(|(_, text)| is_long(text)).count() as u64;
    assert_eq!((done.total, done.processed), (11, 11), "{done:?}");
    assert_eq!(
        done.truncated,
        longs + 1,
        "the rewritten one once: {done:?}"
    );
    assert!(app.get_document("z-last").await.truncated);
    app.stop().await;
}
