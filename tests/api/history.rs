//! `GET /v1/migrations/{id}/history` (API.md "Confidence"): every change of a migration, in
//! order, with its time, the replica that made it and on whose behalf, kept across restarts.

use reembed::config::Tokens;
use reembed::embed::ModelRegistry;
use serde_json::json;

use crate::helpers::{PATIENCE, TestApp};
use crate::states::{MIGRATION, Reached, arrive};
use crate::wire::{HistoryEntry, Migration};

fn kinds(events: &[HistoryEntry]) -> Vec<&str> {
    events.iter().map(|e| e.kind.as_str()).collect()
}

/// The history of `MIGRATION` once it holds an entry of `kind`.
async fn history_once(app: &TestApp, kind: &str) -> Vec<HistoryEntry> {
    let deadline = tokio::time::Instant::now() + PATIENCE;
    loop {
        let events = app.history(MIGRATION).await.events;
        if events.iter().any(|e| e.kind == kind) {
            return events;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "no {kind} entry within {PATIENCE:?}: {events:#?}"
        );
        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_change_is_recorded_in_order_with_its_cause_and_kept_across_a_restart() {
    let arrived = arrive(Reached::Paused, json!({ "batch_size": 2 })).await;
    let (app, probe) = (arrived.app, arrived.probe);
    app.patch_config(MIGRATION, &json!({ "batch_size": 3, "max_concurrent": 1 }))
        .await
        .ok::<Migration>();
    app.action(MIGRATION, "resume").await.ok::<Migration>();
    probe.release();
    app.wait_for_state(MIGRATION, "completed", PATIENCE).await;
    app.action(MIGRATION, "finalize").await.ok::<Migration>();
    let refused = app.action(MIGRATION, "pause").await;
    refused.problem(409, "invalid-transition");

    // The window task makes the target active just after the finalize, on its own, and the
    // cleanup then deletes the source vectors in the background, recording when it is done.
    let events = history_once(&app, "source_vectors_deleted").await;
    assert_eq!(
        kinds(&events),
        [
            "created",
            "started",
            "paused",
            "config_changed",
            "resumed",
            "completed",
            "finalized",
            "window_closed",
            "source_vectors_deleted"
        ],
        "{events:#?}"
    );
    assert!(events.windows(2).all(|pair| pair[0].at <= pair[1].at));
    let by_kind = |kind: &str| events.iter().find(|e| e.kind == kind).expect(kind);
    assert_eq!(
        by_kind("config_changed").detail,
        "batch_size 2 → 3, max_concurrent 4 → 1"
    );
    assert!(
        by_kind("created")
            .detail
            .contains("from hash-v1 to hash-v2")
    );
    for (kind, actor) in [
        ("created", "anonymous"),
        ("paused", "anonymous"),
        ("finalized", "anonymous"),
        ("completed", "service"),
        ("window_closed", "service"),
        ("source_vectors_deleted", "service"),
    ] {
        assert_eq!(by_kind(kind).actor, actor, "{kind}");
    }
    let port = app.base.rsplit(':').next().expect("a port");
    assert!(
        events
            .iter()
            .all(|e| e.replica.ends_with(&format!(":{port}"))),
        "each change names this replica (host:port): {events:#?}"
    );

    let restarted = app.restart(probe.registry()).await;
    let kept = restarted.history(MIGRATION).await.events;
    assert_eq!(kinds(&kept), kinds(&events), "persisted");
    restarted
        .get("/v1/migrations/nope/history")
        .await
        .problem(404, "not-found");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_change_made_with_the_write_token_names_it() {
    let tokens = Tokens {
        write: "s3cret".to_owned(),
        read: Some("peek".to_owned()),
    };
    let app = TestApp::with_config(ModelRegistry::builtin(), |c| c.tokens = Some(tokens)).await;
    let http = reqwest::Client::new();
    let body = json!({ "id": "m", "target_model": "hash-v2", "start": false });
    let created = http
        .post(format!("{}/v1/migrations", app.base))
        .bearer_auth("s3cret")
        .json(&body)
        .send()
        .await
        .expect("sent");
    assert_eq!(created.status(), 201);
    let history = http
        .get(format!("{}/v1/migrations/m/history", app.base))
        .bearer_auth("peek")
        .send()
        .await
        .expect("sent");
    assert_eq!(history.status(), 200, "the read-only token may read it");
    let history: crate::wire::History = history.json().await.expect("a history");
    assert_eq!(kinds(&history.events), ["created"]);
    assert_eq!(history.events[0].actor, "write_token");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_refused_change_leaves_no_entry() {
    let arrived = arrive(Reached::Planned, json!({})).await;
    let app = arrived.app;
    app.action(MIGRATION, "finalize")
        .await
        .problem(409, "invalid-transition");
    app.patch_config(MIGRATION, &json!({ "batch_size": 0 }))
        .await
        .problem(422, "invalid-config");
    let events = app.history(MIGRATION).await.events;
    assert_eq!(kinds(&events), ["created"]);
}
