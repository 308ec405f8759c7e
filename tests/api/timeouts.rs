//! The request time limit (API.md 503, `--request-timeout-secs`) bounds the work before a
//! commit, never the commit: a write that answered 503 changed nothing, and one that began
//! committing answers with the commit's result however long it took.

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
