//! The cutover gate (API.md "Confidence"): with `cutover_gate` set, queries switch to the
//! target at the threshold only while the gate passes, the migration completes only once it
//! passes, and `POST .../cutover` overrides it with a reason the history keeps.

use std::time::Duration;

use serde_json::{Value, json};

use crate::helpers::{PATIENCE, TestApp};
use crate::wire::{Migration, Progress};

/// Documents whose rankings agree in both built-in models (shared words rank higher).
const CORPUS: [(&str, &str); 4] = [
    ("a1", "alpha"),
    ("a2", "alpha bravo"),
    ("a3", "alpha bravo charlie"),
    ("x1", "echo foxtrot"),
];

/// A server with `CORPUS` and migration "m" to hash-v2 under `gate`, its backfill done.
async fn backfilled_behind(gate: Value) -> TestApp {
    let app = TestApp::spawn().await;
    app.bulk(&CORPUS).await;
    let config = json!({ "cutover_gate": gate, "target_query_threshold": 0.5 });
    app.start_migration(&json!({ "id": "m", "target_model": "hash-v2", "config": config }))
        .await;
    let deadline = tokio::time::Instant::now() + PATIENCE;
    while app.progress("m").await.processed < CORPUS.len() as u64 {
        assert!(tokio::time::Instant::now() < deadline, "backfill stuck");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    app
}

/// An evaluation where both models rank alike, so their recalls are equal.
async fn evaluate(app: &TestApp) -> Value {
    let body = json!({ "k": 2, "queries": [
        { "text": "alpha", "relevant_ids": ["a1"] },
        { "text": "bravo charlie", "relevant_ids": ["a3"] },
    ]});
    app.send(
        reqwest::Method::POST,
        "/v1/migrations/m/evaluate",
        Some(&body),
    )
    .await
    .expect(200)
}

async fn cutover(app: &TestApp, body: &Value) -> crate::client::Reply {
    app.send(
        reqwest::Method::POST,
        "/v1/migrations/m/cutover",
        Some(body),
    )
    .await
}

/// The migration's state stays `in_progress` for a while after its backfill is done.
async fn stays_in_progress(app: &TestApp) -> Progress {
    tokio::time::sleep(Duration::from_millis(1200)).await;
    let progress = app.progress("m").await;
    assert_eq!(progress.state, "in_progress", "{progress:?}");
    progress
}

fn kinds(app_history: &crate::wire::History) -> Vec<&str> {
    app_history.events.iter().map(|e| e.kind.as_str()).collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_blocked_gate_holds_queries_and_completion_until_an_override_with_a_reason() {
    let app = backfilled_behind(json!({ "min_recall_ratio": 10 })).await;
    let blocked = stays_in_progress(&app).await;
    assert_eq!(
        (blocked.gate.state.as_str(), blocked.gate.reason.as_str()),
        ("blocked", "no labelled evaluation yet")
    );
    let held = app.query("alpha", 2).await;
    assert_eq!(
        (held.route.as_str(), held.reason.as_str()),
        ("legacy", "gate_blocked"),
        "coverage 1.0 is past the threshold, but the gate holds"
    );

    evaluate(&app).await;
    let still = stays_in_progress(&app).await;
    assert_eq!(still.gate.state, "blocked");
    assert!(
        still.gate.reason.contains("is below 10 × source recall"),
        "{:?}",
        still.gate
    );

    cutover(&app, &json!({}))
        .await
        .problem(400, "malformed-body");
    cutover(&app, &json!({ "reason": "" }))
        .await
        .problem(422, "invalid-value");
    cutover(&app, &json!({ "reason": "read 50 results by hand" }))
        .await
        .ok::<Migration>();
    app.wait_for_state("m", "completed", PATIENCE).await;
    let done = app.progress("m").await;
    assert_eq!(done.gate.state, "overridden");
    assert!(done.gate.reason.ends_with(": read 50 results by hand"));
    let switched = app.query("alpha", 2).await;
    assert_eq!(switched.route, "target");
    cutover(&app, &json!({ "reason": "again" }))
        .await
        .problem(409, "invalid-transition");

    let history = app.history("m").await;
    let overridden = history
        .events
        .iter()
        .find(|e| e.kind == "gate_overridden")
        .expect("the override is in the history");
    assert_eq!(overridden.detail, "read 50 results by hand");
    assert_eq!(overridden.actor, "anonymous");
    let kinds = kinds(&history);
    assert!(!kinds.contains(&"gate_passed"), "{kinds:?}");
    assert_eq!(kinds.last(), Some(&"completed"), "{kinds:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_passing_gate_lets_the_migration_complete_and_says_so() {
    let app = backfilled_behind(json!({ "min_recall_ratio": 0.9 })).await;
    let blocked = stays_in_progress(&app).await;
    assert_eq!(blocked.gate.state, "blocked");

    let evaluation = evaluate(&app).await;
    assert_eq!(
        evaluation["source"]["recall"],
        evaluation["target"]["recall"]
    );
    app.wait_for_state("m", "completed", PATIENCE).await;
    let history = app.history("m").await;
    let kinds = kinds(&history);
    let tail = &kinds[kinds.len() - 3..];
    assert_eq!(tail, ["evaluated", "gate_passed", "completed"], "{kinds:?}");
    let passed = &history.events[kinds.len() - 2];
    assert!(
        passed.detail.contains("≥ 0.9 × source recall"),
        "{passed:?}"
    );
    assert_eq!(passed.actor, "service");
    assert_eq!(app.query("alpha", 2).await.route, "target");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn gates_are_validated_and_a_patch_can_lift_one() {
    let app = backfilled_behind(json!({ "min_recall_ratio": 10 })).await;
    for (gate, why) in [
        (json!({}), "no condition"),
        (
            json!({ "min_samples": 10 }),
            "min_samples without min_overlap",
        ),
        (
            json!({ "min_overlap": 0.5 }),
            "min_overlap without min_samples",
        ),
        (
            json!({ "min_samples": 0, "min_overlap": 0.5 }),
            "no samples",
        ),
        (
            json!({ "min_samples": 10, "min_overlap": 1.5 }),
            "overlap over 1",
        ),
        (json!({ "min_recall_ratio": -1 }), "negative ratio"),
    ] {
        let reply = app
            .patch_config("m", &json!({ "cutover_gate": gate }))
            .await;
        let problem = reply.problem(422, "invalid-config");
        let detail = problem.detail.unwrap_or_default();
        assert!(detail.contains("cutover_gate"), "{why}: {detail}");
    }
    let unknown = app
        .patch_config("m", &json!({ "cutover_gate": { "min_recal_ratio": 1 } }))
        .await;
    unknown.problem(400, "malformed-body");
    stays_in_progress(&app).await;

    let lifted = app
        .patch_config("m", &json!({ "cutover_gate": null }))
        .await
        .ok::<Value>();
    assert_eq!(lifted["config"]["cutover_gate"], Value::Null);
    app.wait_for_state("m", "completed", PATIENCE).await;
    assert_eq!(app.progress("m").await.gate.state, "none");
    cutover(&app, &json!({ "reason": "no gate" }))
        .await
        .problem(409, "invalid-transition");
}
