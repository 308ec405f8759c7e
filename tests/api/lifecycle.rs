//! API.md's state table through HTTP: from every state, every call (the lifecycle actions,
//! PATCH config and retrying the skips) is either accepted and leads where the table says, or
//! refused with 409 `invalid-transition` naming the current state, and then nothing changed. Open migrations refuse a second one (409 `migration-open`).

use std::time::Duration;

use chrono::Utc;
use serde_json::json;

use crate::helpers::{PATIENCE, Reply, TestApp};
use crate::states::{Arrived, MIGRATION, Reached, arrive};
use crate::wire::Migration;

const CALLS: [&str; 8] = [
    "start",
    "pause",
    "resume",
    "cancel",
    "rollback",
    "finalize",
    "config",
    "skips/retry",
];

/// The batch size the `config` call patches in.
const PATCHED_BATCH_SIZE: u64 = 7;

/// The state table, one arm per row: where `call` leads from `from`, `None` if refused.
fn outcome(call: &str, from: Reached) -> Option<&'static str> {
    use Reached::*;
    match (call, from) {
        ("start", Planned) => Some("in_progress"),
        ("pause", InProgress) => Some("paused"),
        ("resume", Paused | Failed) => Some("in_progress"),
        ("cancel", Planned | InProgress | Paused | Failed) => Some("cancelled"),
        ("rollback", InProgress | Paused | Failed | Completed) => Some("rolled_back"),
        ("finalize", Completed) => Some("completed"),
        ("config", Planned | InProgress | Paused | Failed) => Some(from.state()),
        ("skips/retry", InProgress | Paused | Failed) => Some(from.state()),
        _ => None,
    }
}

/// Checks every call from `from`: the refused ones and the second-migration rule on one
/// server, then each accepted call on a server of its own.
async fn check_every_call_from(from: Reached) {
    let first = arrive(from, json!({})).await;
    for call in CALLS.into_iter().filter(|c| outcome(c, from).is_none()) {
        assert_refused(&first, call, from).await;
    }
    let accepted: Vec<&str> = CALLS
        .into_iter()
        .filter(|c| outcome(c, from).is_some())
        .collect();
    if from.is_open() {
        assert_second_migration_refused(&first).await;
    } else {
        assert_second_migration_accepted(&first).await;
    }
    let mut servers = vec![first];
    for _ in 1..accepted.len() {
        servers.push(arrive(from, json!({})).await);
    }
    for (call, arrived) in accepted.into_iter().zip(&servers) {
        assert_accepted(arrived, call, from).await;
    }
}

async fn assert_refused(arrived: &Arrived, call: &str, from: Reached) {
    let app = &arrived.app;
    let before = app.migration(MIGRATION).await;
    let reply = send(app, call).await;
    let problem = reply.problem(409, "invalid-transition");
    assert!(
        problem.detail().contains(from.state()),
        "{call} from {from}: detail must name the current state {}: {reply}",
        from.state()
    );
    let after = app.migration(MIGRATION).await;
    assert_eq!(
        before, after,
        "a refused {call} from {from} changed the migration"
    );
}

async fn assert_accepted(arrived: &Arrived, call: &str, from: Reached) {
    let app = &arrived.app;
    let expected = outcome(call, from).unwrap();
    let reply = send(app, call).await;
    let answered: Migration = reply.ok();
    assert_eq!(answered.state, expected, "{call} from {from}: {reply}");
    let stored = app.migration(MIGRATION).await;
    assert_eq!(
        stored.state, expected,
        "{call} from {from}: state as read back"
    );
    match call {
        "start" => assert!(stored.started_at.is_some(), "start sets started_at"),
        "finalize" => {
            let ends = stored.rollback_window_ends_at.expect("a window end");
            assert!(
                ends <= Utc::now(),
                "finalize ends the window now, not at {ends}"
            );
            assert_eq!(app.models().await.active_model, "hash-v2");
            assert_eq!(app.routing().await.phase, "stable");
        }
        "rollback" | "cancel" => {
            let routing = app.routing().await;
            assert_eq!(
                (routing.query_model.as_str(), routing.phase.as_str()),
                ("hash-v1", "stable")
            );
        }
        "config" => assert_eq!(stored.config.batch_size, PATCHED_BATCH_SIZE),
        _ => {}
    }
}

/// Makes `call` on the migration: `config` patches the batch size, the others are POSTs.
async fn send(app: &TestApp, call: &str) -> Reply {
    match call {
        "config" => {
            let patch = json!({ "batch_size": PATCHED_BATCH_SIZE });
            app.patch_config(MIGRATION, &patch).await
        }
        _ => app.action(MIGRATION, call).await,
    }
}

async fn assert_second_migration_refused(arrived: &Arrived) {
    let app = &arrived.app;
    let reply = app
        .create_migration(&json!({ "id": "second", "target_model": "hash-v2" }))
        .await;
    reply.problem(409, "migration-open");
    let ids: Vec<String> = app.migrations().await.into_iter().map(|m| m.id).collect();
    assert_eq!(ids, [MIGRATION], "a refused migration was recorded");
}

/// Once settled, a new migration from the active model may start.
async fn assert_second_migration_accepted(arrived: &Arrived) {
    let app = &arrived.app;
    let active = app.models().await.active_model;
    let target = if active == "hash-v1" {
        "hash-v2"
    } else {
        "hash-v1"
    };
    let body = json!({ "id": "second", "target_model": target, "start": false });
    let second = app.start_migration(&body).await;
    assert_eq!(
        (second.source_model.as_str(), second.state.as_str()),
        (active.as_str(), "planned")
    );
    let ids: Vec<String> = app.migrations().await.into_iter().map(|m| m.id).collect();
    assert_eq!(
        ids,
        ["second", MIGRATION],
        "GET /v1/migrations lists newest first"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_call_from_planned() {
    check_every_call_from(Reached::Planned).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_call_from_in_progress() {
    check_every_call_from(Reached::InProgress).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_call_from_paused() {
    check_every_call_from(Reached::Paused).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_call_from_failed() {
    check_every_call_from(Reached::Failed).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_call_from_completed_inside_the_window() {
    check_every_call_from(Reached::Completed).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_call_from_finalized() {
    check_every_call_from(Reached::Finalized).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_call_from_cancelled() {
    check_every_call_from(Reached::Cancelled).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_call_from_rolled_back() {
    check_every_call_from(Reached::RolledBack).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn in_progress_completes_by_itself_when_every_document_is_processed() {
    let Arrived { app, probe, .. } = arrive(Reached::InProgress, json!({})).await;
    probe.release();
    let done = app.wait_for_state(MIGRATION, "completed", PATIENCE).await;
    assert_eq!((done.processed, done.skipped, done.total), (3, 0, 3));
    let migration = app.migration(MIGRATION).await;
    let completed = migration.completed_at.expect("completed_at");
    let window = chrono::Duration::seconds(86_400);
    assert_eq!(
        migration.rollback_window_ends_at,
        Some(completed + window),
        "window starts at completed_at"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn in_progress_fails_with_an_error_when_the_provider_keeps_failing_and_resumes() {
    let Arrived {
        app,
        probe,
        migration,
    } = arrive(Reached::Failed, json!({})).await;
    let error = migration.error.expect("a failed migration says why");
    assert!(!error.is_empty());
    probe.fail(false);
    probe.release();
    app.action(MIGRATION, "resume").await.ok::<Migration>();
    let done = app.wait_for_state(MIGRATION, "completed", PATIENCE).await;
    assert_eq!(done.processed + done.skipped, done.total);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rollback_and_finalize_are_refused_once_the_window_has_elapsed() {
    let config = json!({ "rollback_window_secs": 1 });
    let Arrived { app, .. } = arrive(Reached::Completed, config).await;
    crate::helpers::eventually(Duration::from_secs(30), "the window to elapse", || async {
        let routing = app.routing().await;
        (routing.phase == "stable")
            .then_some(())
            .ok_or(format!("{routing:?}"))
    })
    .await;
    for call in ["rollback", "finalize"] {
        let reply = app.action(MIGRATION, call).await;
        let problem = reply.problem(409, "invalid-transition");
        assert!(problem.detail().contains("completed"), "{reply}");
    }
    assert_eq!(app.models().await.active_model, "hash-v2");
}
