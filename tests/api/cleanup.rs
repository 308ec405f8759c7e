//! After the switch (API.md "Confidence", `retain_source_vectors`): once the target is the
//! active model, the source model's vectors are deleted in the background, in bounded
//! batches, and its index freed; progress and history say so. Retained on request.

use std::time::Duration;

use serde_json::json;

use crate::helpers::{PATIENCE, TestApp, corpus};
use crate::wire::{Migration, Progress};

/// 2,500 documents: more than one deletion batch.
const DOCUMENTS: usize = 2500;

/// A server whose migration "m" to hash-v2 (configured by `config`) completed and was
/// finalized, with the ids of its documents.
async fn finalized(config: serde_json::Value) -> (TestApp, Vec<String>) {
    let app = TestApp::spawn().await;
    let docs = corpus("doc", DOCUMENTS);
    app.load(&docs, 500).await;
    app.start_migration(&json!({ "id": "m", "target_model": "hash-v2", "config": config }))
        .await;
    app.wait_for_state("m", "completed", PATIENCE).await;
    app.action("m", "finalize").await.ok::<Migration>();
    (app, docs.into_iter().map(|(id, _)| id).collect())
}

/// Progress of "m" once its `source_cleanup.state` is `state`.
async fn cleanup_reaches(app: &TestApp, state: &str) -> Progress {
    let deadline = tokio::time::Instant::now() + PATIENCE;
    loop {
        let progress = app.progress("m").await;
        if progress.source_cleanup.state == state {
            return progress;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "cleanup never became {state}: {:?}",
            progress.source_cleanup
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn after_finalize_the_source_vectors_are_deleted_and_the_history_says_so() {
    let (app, ids) = finalized(json!({})).await;
    let done = cleanup_reaches(&app, "done").await;
    assert_eq!(done.source_cleanup.deleted, DOCUMENTS as u64);
    for id in ids.iter().step_by(250) {
        let document = app.get_document(id).await;
        let models: Vec<&str> = document.embeddings.keys().map(String::as_str).collect();
        assert_eq!(models, ["hash-v2"], "{id}: {document:?}");
    }
    let answer = app.query("note 42 on the harbor", 3).await;
    assert_eq!(answer.model, "hash-v2");
    assert!(!answer.hits.is_empty());

    let history = app.history("m").await.events;
    let kinds: Vec<&str> = history.iter().map(|e| e.kind.as_str()).collect();
    let closed = kinds
        .iter()
        .position(|k| *k == "window_closed")
        .expect("closed");
    let deleted = kinds
        .iter()
        .position(|k| *k == "source_vectors_deleted")
        .expect("the deletion is in the history");
    assert!(closed < deleted, "{kinds:?}");
    assert_eq!(
        history[deleted].detail,
        format!("{DOCUMENTS} vectors of hash-v1 deleted; its index is freed")
    );
    assert_eq!(history[deleted].actor, "service");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn retained_source_vectors_stay() {
    let (app, ids) = finalized(json!({ "retain_source_vectors": true })).await;
    let retained = cleanup_reaches(&app, "retained").await;
    assert_eq!(retained.source_cleanup.deleted, 0);
    tokio::time::sleep(Duration::from_millis(1500)).await;
    let document = app.get_document(&ids[7]).await;
    let models: Vec<&str> = document.embeddings.keys().map(String::as_str).collect();
    assert_eq!(models, ["hash-v1", "hash-v2"]);
    let kinds: Vec<String> = app
        .history("m")
        .await
        .events
        .into_iter()
        .map(|e| e.kind)
        .collect();
    assert!(
        !kinds.contains(&"source_vectors_deleted".to_owned()),
        "{kinds:?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn inside_the_window_nothing_is_deleted() {
    let app = TestApp::spawn().await;
    app.load(&corpus("doc", 20), 20).await;
    app.start_migration(&json!({ "id": "m", "target_model": "hash-v2" }))
        .await;
    app.wait_for_state("m", "completed", PATIENCE).await;
    tokio::time::sleep(Duration::from_millis(1500)).await;
    let progress = app.progress("m").await;
    assert_eq!(
        (
            progress.source_cleanup.state.as_str(),
            progress.source_cleanup.deleted
        ),
        ("waiting", 0),
        "rollback may still need them"
    );
    let document = app.get_document("doc-000003").await;
    assert_eq!(document.embeddings.len(), 2);
}
