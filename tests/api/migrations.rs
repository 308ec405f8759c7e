//! `/v1/migrations` (API.md "Migrations"): creation defaults and limits, the migration and
//! progress shapes, PATCH while running, skips, pause reasons, and what a restart keeps.

use std::collections::BTreeSet;

use chrono::Utc;
use reembed::embed::ModelRegistry;
use serde_json::{Value, json};

use crate::helpers::{PATIENCE, TestApp};
use crate::probe::{HELD, POISON, Probe};
use crate::wire::{Migration, MigrationConfig};

/// API.md's defaults: 100, 4, true, 0.8, 86400, and no canary.
pub fn default_config() -> MigrationConfig {
    MigrationConfig {
        batch_size: 100,
        max_concurrent: 4,
        dual_write: true,
        target_query_threshold: 0.8,
        rollback_window_secs: 86_400,
        canary_percent: 0.0,
        shadow_percent: 0.0,
    }
}

fn keys(value: &Value) -> BTreeSet<&str> {
    value
        .as_object()
        .expect("an object")
        .keys()
        .map(String::as_str)
        .collect()
}

fn assert_has_keys(value: &Value, expected: &[&str]) {
    let present = keys(value);
    let missing: Vec<&&str> = expected.iter().filter(|k| !present.contains(**k)).collect();
    assert!(missing.is_empty(), "missing {missing:?} in {value}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn only_target_model_is_required_and_the_rest_defaults() {
    let app = TestApp::spawn().await;
    let before = Utc::now();
    let reply = app
        .create_migration(&json!({ "target_model": "hash-v2", "start": false }))
        .await;
    let migration: Migration = reply.expect(201);
    assert!(!migration.id.is_empty(), "an id is generated");
    assert_eq!(
        reply.location,
        Some(format!("/v1/migrations/{}", migration.id))
    );
    assert_eq!(
        (
            migration.source_model.as_str(),
            migration.target_model.as_str()
        ),
        ("hash-v1", "hash-v2")
    );
    assert_eq!(migration.config, default_config());
    assert_eq!(migration.state, "planned");
    assert!(migration.created_at >= before - chrono::Duration::seconds(5));
    assert_eq!(migration.started_at, None);
    assert_eq!(migration.completed_at, None);
    assert_eq!(migration.rollback_window_ends_at, None);
    assert_eq!(migration.error, None);
    let raw = app
        .get(&format!("/v1/migrations/{}", migration.id))
        .await
        .json();
    let fields = [
        "id",
        "source_model",
        "target_model",
        "config",
        "state",
        "created_at",
    ];
    assert_has_keys(&raw, &fields);
    assert_has_keys(
        &raw,
        &[
            "started_at",
            "completed_at",
            "rollback_window_ends_at",
            "error",
        ],
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn start_defaults_to_true() {
    let probe = Probe::new();
    probe.hold();
    let app = TestApp::with_models(probe.registry()).await;
    app.bulk(&[("a", format!("{HELD} a").as_str())]).await;
    let migration = app
        .start_migration(&json!({ "target_model": "hash-v2" }))
        .await;
    assert_eq!(migration.state, "in_progress");
    assert!(migration.started_at.is_some());
    probe.release();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_documented_example_body_is_accepted_as_given() {
    let app = TestApp::spawn().await;
    let config = json!({ "batch_size": 200, "max_concurrent": 8, "dual_write": true,
                         "target_query_threshold": 0.9, "rollback_window_secs": 3600 });
    let body = json!({ "id": "mig-001", "target_model": "hash-v2", "source_model": "hash-v1",
                       "config": config, "start": true });
    let migration = app.start_migration(&body).await;
    assert_eq!(migration.id, "mig-001");
    let expected = MigrationConfig {
        batch_size: 200,
        max_concurrent: 8,
        dual_write: true,
        target_query_threshold: 0.9,
        rollback_window_secs: 3600,
        canary_percent: 0.0,
        shadow_percent: 0.0,
    };
    assert_eq!(app.migration("mig-001").await.config, expected);
    let done = app.wait_for_state("mig-001", "completed", PATIENCE).await;
    assert_eq!(
        (done.total, done.processed, done.coverage),
        (0, 0, 1.0),
        "an empty corpus"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn limits_are_inclusive() {
    let app = TestApp::spawn().await;
    let edges = [
        json!({ "batch_size": 1, "max_concurrent": 1, "target_query_threshold": 0.0, "rollback_window_secs": 0 }),
        json!({ "batch_size": 10_000, "max_concurrent": 64, "target_query_threshold": 1.0 }),
    ];
    for (i, config) in edges.iter().enumerate() {
        let id = format!("edge-{i}");
        let body = json!({ "id": id, "target_model": "hash-v2", "config": config, "start": false });
        app.start_migration(&body).await;
        app.action(&id, "cancel").await.ok::<Migration>();
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn progress_reports_every_documented_field() {
    let app = TestApp::spawn().await;
    app.bulk(&[("a", "one"), ("b", "two"), ("c", "three")])
        .await;
    app.start_migration(&json!({ "id": "m", "target_model": "hash-v2" }))
        .await;
    app.wait_for_state("m", "completed", PATIENCE).await;
    let raw = app.get("/v1/migrations/m/progress").await.json();
    assert_has_keys(
        &raw,
        &[
            "id",
            "state",
            "phase",
            "total",
            "processed",
            "skipped",
            "failed",
            "truncated",
        ],
    );
    assert_has_keys(
        &raw,
        &[
            "remaining",
            "progress",
            "coverage",
            "throughput_per_sec",
            "eta_secs",
        ],
    );
    assert_has_keys(
        &raw,
        &["in_flight_batches", "replicas", "query_route", "updated_at"],
    );
    let p = app.progress("m").await;
    let port = app.base.rsplit(':').next().expect("a port");
    assert_eq!(p.replicas.len(), 1, "one process: {p:?}");
    let replica = &p.replicas[0];
    assert!(
        replica.id.ends_with(&format!(":{port}")),
        "named by host and port by default: {replica:?}"
    );
    assert_eq!((replica.in_flight_batches, replica.processed), (0, 3));
    assert_eq!(
        (p.id.as_str(), p.phase.as_str(), p.query_route.as_str()),
        ("m", "rollback_window", "target")
    );
    assert_eq!(
        (p.total, p.processed, p.skipped, p.failed, p.remaining),
        (3, 3, 0, 0, 0)
    );
    assert_eq!((p.progress, p.coverage, p.in_flight_batches), (1.0, 1.0, 0));
    assert_eq!(p.truncated, 0, "hash-v2 has no input limit");
    assert_eq!(p.throughput_per_sec, None, "not in progress: {p:?}");
    assert_eq!(p.eta_secs, Some(0.0), "nothing remains: {p:?}");
    assert!(p.updated_at <= Utc::now(), "{p:?}");
    assert!(app.skips("m").await.is_empty());
}

/// `--replica-id` names the process in progress `replicas`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn progress_names_the_replica_by_its_replica_id() {
    let app = TestApp::with_config(ModelRegistry::builtin(), |config| {
        config.replica_id = Some("replica-one".to_owned());
    })
    .await;
    app.bulk(&[("a", "one"), ("b", "two")]).await;
    app.start_migration(&json!({ "id": "m", "target_model": "hash-v2" }))
        .await;
    app.wait_for_state("m", "completed", PATIENCE).await;
    let replicas = app.progress("m").await.replicas;
    assert_eq!(
        replicas
            .iter()
            .map(|r| (r.id.as_str(), r.processed))
            .collect::<Vec<_>>(),
        [("replica-one", 2)]
    );
}

/// A document the provider rejects for good is skipped with the reason, its batch goes on,
/// and coverage (processed / (total − skipped)) still reaches 1.0 (invariant 2).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_document_the_provider_rejects_is_skipped_with_its_reason() {
    let probe = Probe::new();
    let app = TestApp::with_models(probe.registry()).await;
    let mut docs = crate::helpers::corpus("doc", 10);
    docs.push(("bad".into(), format!("a {POISON} text")));
    app.load(&docs, 100).await;
    let config = json!({ "batch_size": 4, "target_query_threshold": 1.0 });
    app.start_migration(&json!({ "id": "m", "target_model": "hash-v2", "config": config }))
        .await;
    let done = app.wait_for_state("m", "completed", PATIENCE).await;
    assert_eq!(
        (done.total, done.processed, done.skipped, done.remaining),
        (11, 10, 1, 0),
        "{done:?}"
    );
    assert_eq!(done.coverage, 1.0);
    assert_eq!(
        done.query_route, "target",
        "skips do not hold queries on the source"
    );
    let skips = app.skips("m").await;
    assert_eq!(skips.len(), 1, "{skips:?}");
    assert_eq!(skips[0].document_id, "bad");
    assert!(
        !skips[0].reason.is_empty() && skips[0].at <= Utc::now(),
        "{skips:?}"
    );
    let bad = app.get_document("bad").await;
    assert_eq!(bad.vector_version("hash-v2"), None, "{bad:?}");
}

/// The first batch (100 documents) is held in flight; the PATCH lands while it waits, and
/// every later batch respects the new size.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn patching_the_config_while_running_applies_to_the_next_batch() {
    let probe = Probe::new();
    probe.hold();
    let app = TestApp::with_models(probe.registry()).await;
    let corpus: Vec<(String, String)> = (0..300)
        .map(|i| (format!("d{i:03}"), format!("{HELD} {i}")))
        .collect();
    app.load(&corpus, 300).await;
    let config = json!({ "batch_size": 100, "max_concurrent": 1 });
    app.start_migration(&json!({ "id": "m", "target_model": "hash-v2", "config": config }))
        .await;
    crate::helpers::eventually(PATIENCE, "the first batch in flight", || async {
        let sizes = probe.batch_sizes();
        sizes
            .contains(&100)
            .then_some(())
            .ok_or(format!("{sizes:?}"))
    })
    .await;
    let patched: Migration = app
        .patch_config("m", &json!({ "batch_size": 7 }))
        .await
        .ok();
    let expected = MigrationConfig {
        batch_size: 7,
        max_concurrent: 1,
        ..default_config()
    };
    assert_eq!(patched.config, expected);
    assert_eq!(app.migration("m").await.config, expected);
    probe.release();
    let done = app.wait_for_state("m", "completed", PATIENCE).await;
    assert_eq!((done.processed, done.total), (300, 300));
    let sizes = probe.batch_sizes();
    let over_seven: Vec<&usize> = sizes.iter().filter(|&&n| n > 7).collect();
    assert_eq!(
        over_seven,
        [&100],
        "only the batch in flight at the PATCH: {sizes:?}"
    );
    assert_eq!(
        probe.held_embedded(),
        300,
        "each document embedded once: {sizes:?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pause_takes_an_optional_reason() {
    let probe = Probe::new();
    probe.hold();
    let app = TestApp::with_models(probe.registry()).await;
    app.bulk(&[("a", format!("{HELD} a").as_str())]).await;
    app.start_migration(&json!({ "id": "m", "target_model": "hash-v2" }))
        .await;
    let body = json!({ "reason": "slowing down for the night" });
    let reply = app
        .send(reqwest::Method::POST, "/v1/migrations/m/pause", Some(&body))
        .await;
    assert_eq!(reply.ok::<Migration>().state, "paused");
    probe.release();
}

/// `completed_at` and `rollback_window_ends_at` are wall-clock and persisted.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_restart_keeps_the_migration_and_its_window() {
    let app = TestApp::spawn().await;
    app.bulk(&[("a", "one"), ("b", "two")]).await;
    app.start_migration(&json!({ "id": "m", "target_model": "hash-v2" }))
        .await;
    app.wait_for_state("m", "completed", PATIENCE).await;
    let before = app.migration("m").await;
    let app = app.restart(ModelRegistry::builtin()).await;
    assert_eq!(app.migration("m").await, before);
    let routing = app.routing().await;
    assert_eq!(
        (routing.phase.as_str(), routing.query_model.as_str()),
        ("rollback_window", "hash-v2")
    );
    app.action("m", "finalize").await.ok::<Migration>();
    let app = app.restart(ModelRegistry::builtin()).await;
    assert_eq!(
        app.models().await.active_model,
        "hash-v2",
        "finalize survives a restart"
    );
    assert_eq!(app.routing().await.query_model, "hash-v2");
}

/// What the OpenAPI document allows, the server accepts: a `null` config is no config, a
/// `null` pause body is no body, and an integer written `5.0` (an integer to JSON Schema) is 5;
/// `5.5` is not an integer and stays a 400.
#[tokio::test]
async fn what_the_schema_allows_is_accepted() {
    let app = TestApp::spawn().await;
    app.put_document("one", "a document").await;
    let created = app
        .create_migration(
            &json!({"id": "nulls", "target_model": "hash-v2", "config": null, "start": false}),
        )
        .await;
    let migration: Migration = created.expect(201);
    assert_eq!(migration.config.batch_size, 100, "defaults");

    let patched = app
        .patch_config(
            "nulls",
            &json!({"batch_size": 5.0, "rollback_window_secs": 60.0}),
        )
        .await;
    assert_eq!(patched.status, 200, "{patched}");
    let config = app.migration("nulls").await.config;
    assert_eq!((config.batch_size, config.rollback_window_secs), (5, 60));
    app.patch_config("nulls", &json!({"batch_size": 5.5}))
        .await
        .problem(400, "malformed-body");
    app.patch_config("nulls", &json!({"max_concurrent": 1e30}))
        .await
        .problem(422, "invalid-config");

    let query = app
        .query_reply(&json!({"text": "a document", "top_k": 3.0}))
        .await;
    assert_eq!(query.status, 200, "{query}");

    assert_eq!(app.action("nulls", "start").await.status, 200);
    let paused = app
        .send_raw(
            reqwest::Method::POST,
            "/v1/migrations/nulls/pause",
            Some(("application/json", "null".to_owned())),
        )
        .await;
    // Parsed before the transition is tried: a 409 (it completed first) also took the body.
    if paused.status != 200 {
        paused.problem(409, "invalid-transition");
    }
}
