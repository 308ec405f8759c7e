//! The request time limit (API.md 503, `--request-timeout-secs`) bounds the work before a
//! commit, never the commit: a write that answered 503 changed nothing, and one that began
//! committing answers with the commit's result however long it took. A write the store keeps
//! refusing for a stale routing is a 503 too, with nothing written.

use std::collections::BTreeSet;
use std::time::Duration;

use serde_json::{Value, json};
use tokio::task::JoinSet;

use crate::helpers::TestApp;

/// Concurrent bulk writes: together they take longer to commit than the limit.
const WRITES: usize = 16;
const DOCUMENTS: usize = 1_000;
const LIMIT: Duration = Duration::from_secs(1);

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_write_answered_503_changed_nothing_and_one_answered_200_is_stored_in_full() {
    let app = TestApp::with_config(reembed::embed::ModelRegistry::builtin(), |config| {
        config.limits.request_timeout = LIMIT;
    })
    .await;
    let mut writes = JoinSet::new();
    for write in 0..WRITES {
        let api = (*app).clone();
        writes.spawn(async move {
            let documents: Vec<Value> = (0..DOCUMENTS)
                .map(|i| json!({"id": format!("w{write:02}-{i:04}"), "text": format!("write {write} document {i}")}))
                .collect();
            (write, api.bulk_reply(&json!({"documents": documents})).await)
        });
    }
    let mut stored = BTreeSet::new();
    let mut refused = BTreeSet::new();
    for (write, reply) in writes.join_all().await {
        match reply.status {
            200 => stored.insert(write),
            503 => {
                reply.problem(503, "unavailable");
                refused.insert(write)
            }
            _ => panic!("write {write}: {reply}"),
        };
    }
    // A write queued behind every commit still pending: when it answers, none is left.
    assert_eq!(
        app.put_document_reply("last", &json!({"text": "after them"}))
            .await
            .status,
        200
    );

    let ids: BTreeSet<String> = app
        .all_documents(1000)
        .await
        .into_iter()
        .map(|d| d.id)
        .collect();
    for write in 0..WRITES {
        let held = (0..DOCUMENTS)
            .filter(|i| ids.contains(&format!("w{write:02}-{i:04}")))
            .count();
        let expected = if stored.contains(&write) {
            DOCUMENTS
        } else {
            0
        };
        assert_eq!(
            held, expected,
            "write {write}: stored {stored:?}, refused {refused:?}"
        );
    }
    assert!(!stored.is_empty(), "no write committed within the limit");
    app.stop().await;
}

/// A write whose routing the store keeps refusing gives up after its re-route attempts with
/// 503 `unavailable` (retry later), not 409 `invalid-transition` (the client asked for no
/// transition), and writes nothing. Here the store holds a migration whose rollback window has
/// closed and which the server's memory never saw, so every re-route is as stale as the first.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_write_that_keeps_losing_its_reroute_race_is_503_and_writes_nothing() {
    if crate::store::on_postgres() {
        // A replica's view follows the database within a second (`snapshot`), so a migration
        // made behind its back does not keep every re-route stale: nothing to test there.
        return;
    }
    use sqlx::sqlite::{SqliteConnectOptions, SqlitePool};
    let dir = tempfile::tempdir().expect("temp dir");
    let file = SqliteConnectOptions::new().filename(dir.path().join("reembed.db"));
    let app = TestApp::spawn_in(dir, reembed::embed::ModelRegistry::builtin()).await;
    let db = SqlitePool::connect_with(file).await.expect("the database");
    let closed = (chrono::Utc::now() - chrono::Duration::hours(1)).to_rfc3339();
    sqlx::query(
        "INSERT INTO migrations (id, source_model, target_model, config, state, created_at,
                                 started_at, completed_at, rollback_window_ends_at)
         VALUES ('behind-its-back', 'hash-v1', 'hash-v2', '{}', 'completed', ?1, ?1, ?1, ?1)",
    )
    .bind(&closed)
    .execute(&db)
    .await
    .expect("a migration the server did not make");
    db.close().await;

    app.put_document_reply("raced", &json!({"text": "routed to hash-v1 alone"}))
        .await
        .problem(503, "unavailable");
    app.document_reply("raced").await.problem(404, "not-found");
}
