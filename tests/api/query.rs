//! `POST /v1/query` (API.md "Query"): the query model's index only, `top_k`, ranking, hits.

use serde_json::json;

use crate::helpers::{PATIENCE, TestApp};
use crate::probe::{HELD, Probe};

const DOCS: [(&str, &str); 4] = [
    ("fox", "the quick brown fox jumps over the lazy dog"),
    ("tea", "green tea is brewed with water just below boiling"),
    ("rust", "rust makes systems programming safe and fast"),
    ("river", "the river runs past the old mill toward the sea"),
];

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_most_similar_document_ranks_first_and_hits_carry_id_score_text() {
    let app = TestApp::spawn().await;
    app.bulk(&DOCS).await;
    for (id, text) in DOCS {
        let result = app.query(text, 4).await;
        assert_eq!(
            result.hits[0].id, id,
            "its own text must rank {id} first: {result:?}"
        );
        assert_eq!(result.hits[0].text, text);
        assert!(
            result.hits[0].score > 0.99,
            "identical text scores ~1: {result:?}"
        );
        let scores: Vec<f64> = result.hits.iter().map(|h| h.score).collect();
        assert!(
            scores.windows(2).all(|w| w[0] >= w[1]),
            "hits best first: {scores:?}"
        );
    }
    let lexical = app.query("a quick brown fox", 4).await;
    assert_eq!(lexical.hits[0].id, "fox", "{lexical:?}");
    let shape = app
        .query_reply(&json!({ "text": "tea", "top_k": 1 }))
        .await
        .json();
    assert_eq!(shape["migration_id"], json!(null), "{shape}");
    let hit = shape["hits"][0].as_object().unwrap();
    assert!(
        ["id", "score", "text", "metadata"]
            .iter()
            .all(|k| hit.contains_key(*k)),
        "{shape}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn top_k_bounds_the_hits() {
    let app = TestApp::spawn().await;
    app.bulk(&DOCS).await;
    assert_eq!(app.query("the river", 2).await.hits.len(), 2);
    assert_eq!(app.query("the river", 1).await.hits.len(), 1);
    assert_eq!(app.query("the river", 50).await.hits.len(), DOCS.len());
    let empty = TestApp::spawn().await;
    assert!(empty.query("anything", 5).await.hits.is_empty());
}

/// With threshold 0.0 queries go to hash-v2 while the backfill is held: only the document
/// written (dual) during the migration has a hash-v2 vector, so it is the only possible hit,
/// even for a query that is word for word an older document.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hits_come_from_the_query_models_index_only() {
    let probe = Probe::new();
    probe.hold();
    let app = TestApp::with_models(probe.registry()).await;
    let old_text = "an old document about lighthouses";
    app.bulk(&[("old", format!("{HELD} {old_text}").as_str())])
        .await;
    let config = json!({ "target_query_threshold": 0.0 });
    app.start_migration(&json!({ "id": "m", "target_model": "hash-v2", "config": config }))
        .await;
    app.put_document("new", "a new document about gardens")
        .await;

    let result = app.query(old_text, 10).await;
    assert_eq!(
        (result.model.as_str(), result.route.as_str()),
        ("hash-v2", "target")
    );
    assert_eq!(
        result.hit_ids(),
        ["new"],
        "only hash-v2 vectors may answer: {result:?}"
    );

    probe.release();
    app.wait_for_state("m", "completed", PATIENCE).await;
    let after = app.query(old_text, 10).await;
    assert_eq!(after.model, "hash-v2");
    assert_eq!(
        after.hit_ids()[0],
        "old",
        "backfilled into hash-v2: {after:?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn after_a_migration_past_its_threshold_queries_use_the_target() {
    let app = TestApp::spawn().await;
    app.bulk(&DOCS).await;
    let before = app.query("green tea", 2).await;
    assert_eq!(
        (
            before.model.as_str(),
            before.route.as_str(),
            before.phase.as_str()
        ),
        ("hash-v1", "legacy", "stable")
    );
    app.start_migration(&json!({ "id": "m", "target_model": "hash-v2" }))
        .await;
    app.wait_for_state("m", "completed", PATIENCE).await;
    let after = app.query("green tea", 2).await;
    let routed = (
        after.model.as_str(),
        after.route.as_str(),
        after.phase.as_str(),
    );
    assert_eq!(routed, ("hash-v2", "target", "rollback_window"));
    assert_eq!(after.migration_id.as_deref(), Some("m"));
    assert_eq!(after.hits[0].id, "tea", "{after:?}");
}
