//! API.md's routing table through HTTP, one test per row: `GET /v1/routing`, then a write and
//! a query, which must follow the same decision.

use std::collections::BTreeSet;
use std::time::Duration;

use serde_json::json;

use crate::helpers::{Api, TestApp, eventually};
use crate::probe::{HELD, Probe};
use crate::states::{Arrived, MIGRATION, Reached, arrive};
use crate::wire::Migration;

/// One row of the routing table, as `GET /v1/routing` reports it.
#[derive(Debug)]
struct Row {
    phase: &'static str,
    query_model: &'static str,
    write_models: &'static [&'static str],
    query_route: &'static str,
    write_route: &'static str,
}

const SOURCE_ONLY: Row = Row {
    phase: "stable",
    query_model: "hash-v1",
    write_models: &["hash-v1"],
    query_route: "legacy",
    write_route: "legacy",
};

const CUT_OVER: Row = Row {
    phase: "stable",
    query_model: "hash-v2",
    write_models: &["hash-v2"],
    query_route: "target",
    write_route: "target",
};

fn set<S: AsRef<str>>(models: &[S]) -> BTreeSet<String> {
    models.iter().map(|m| m.as_ref().to_owned()).collect()
}

/// Asserts the routing, then that a write and a query follow it.
async fn assert_row(api: &Api, migration_id: Option<&str>, row: &Row) {
    let routing = api.routing().await;
    let seen = (
        routing.phase.as_str(),
        routing.query_model.as_str(),
        set(&routing.write_models),
        routing.query_route.as_str(),
        routing.write_route.as_str(),
    );
    let expected = (
        row.phase,
        row.query_model,
        set(row.write_models),
        row.query_route,
        row.write_route,
    );
    assert_eq!(seen, expected, "routing {routing:?} is not the row {row:?}");
    assert_eq!(routing.migration_id.as_deref(), migration_id);
    assert!((0.0..=1.0).contains(&routing.progress), "{routing:?}");
    if crate::store::on_postgres() {
        assert!(routing.snapshot_age_ms <= 2_000, "{routing:?}");
    } else {
        assert_eq!(
            routing.snapshot_age_ms, 0,
            "one process on SQLite: {routing:?}"
        );
    }

    let written = api
        .put_document("written-now", "a document written under this routing")
        .await;
    assert_eq!(
        set(&written.embedded_with),
        set(row.write_models),
        "{written:?}"
    );
    assert_eq!(written.write_route, row.write_route, "{written:?}");
    let stored = api.get_document("written-now").await;
    for model in row.write_models {
        assert!(
            stored.is_current_in(model),
            "no current {model} vector: {stored:?}"
        );
    }

    let query = api.query("a document written under this routing", 3).await;
    let seen = (
        query.route.as_str(),
        query.model.as_str(),
        query.phase.as_str(),
    );
    assert_eq!(
        seen,
        (row.query_route, row.query_model, row.phase),
        "{query:?}"
    );
    assert_eq!(query.migration_id.as_deref(), migration_id);
}

async fn assert_row_in(state: Reached, config: serde_json::Value, row: &Row) -> Arrived {
    let arrived = arrive(state, config).await;
    assert_row(&arrived.app, Some(MIGRATION), row).await;
    arrived
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn no_migration_ever_routes_everything_to_the_active_model() {
    let app = TestApp::spawn().await;
    assert_row(&app, None, &SOURCE_ONLY).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn planned_routes_to_the_source() {
    assert_row_in(Reached::Planned, json!({}), &SOURCE_ONLY).await;
}

const MIGRATING_DUAL: Row = Row {
    phase: "migrating",
    query_model: "hash-v1",
    write_models: &["hash-v1", "hash-v2"],
    query_route: "legacy",
    write_route: "dual_write",
};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn in_progress_with_dual_write_writes_both_and_queries_the_source_below_the_threshold() {
    let arrived = assert_row_in(Reached::InProgress, json!({}), &MIGRATING_DUAL).await;
    assert_eq!(
        arrived.app.routing().await.progress,
        0.0,
        "nothing is processed yet"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn in_progress_without_dual_write_writes_the_source_only() {
    let row = Row {
        write_models: &["hash-v1"],
        write_route: "legacy",
        ..MIGRATING_DUAL
    };
    assert_row_in(Reached::InProgress, json!({ "dual_write": false }), &row).await;
}

const MIGRATING_ON_TARGET: Row = Row {
    query_model: "hash-v2",
    query_route: "target",
    ..MIGRATING_DUAL
};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn threshold_zero_routes_queries_to_the_target_at_once() {
    let config = json!({ "target_query_threshold": 0.0 });
    assert_row_in(Reached::InProgress, config, &MIGRATING_ON_TARGET).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn paused_keeps_the_routing_where_it_was() {
    assert_row_in(Reached::Paused, json!({}), &MIGRATING_DUAL).await;
    let config = json!({ "target_query_threshold": 0.0 });
    assert_row_in(Reached::Paused, config, &MIGRATING_ON_TARGET).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn failed_routes_to_the_source() {
    assert_row_in(Reached::Failed, json!({}), &SOURCE_ONLY).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn completed_inside_the_window_queries_the_target_and_writes_both() {
    let row = Row {
        phase: "rollback_window",
        query_model: "hash-v2",
        write_models: &["hash-v1", "hash-v2"],
        query_route: "target",
        write_route: "dual_write",
    };
    let arrived = assert_row_in(Reached::Completed, json!({}), &row).await;
    assert_eq!(arrived.app.routing().await.progress, 1.0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn completed_after_the_window_routes_everything_to_the_target() {
    let Arrived { app, .. } =
        arrive(Reached::Completed, json!({ "rollback_window_secs": 1 })).await;
    eventually(
        Duration::from_secs(30),
        "the 1 s window to elapse",
        || async {
            let routing = app.routing().await;
            (routing.phase == "stable")
                .then_some(())
                .ok_or(format!("{routing:?}"))
        },
    )
    .await;
    assert_row(&app, Some(MIGRATION), &CUT_OVER).await;
    assert_eq!(app.models().await.active_model, "hash-v2");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn finalized_routes_everything_to_the_target() {
    let arrived = assert_row_in(Reached::Finalized, json!({}), &CUT_OVER).await;
    assert_eq!(arrived.app.models().await.active_model, "hash-v2");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cancelled_routes_to_the_source() {
    assert_row_in(Reached::Cancelled, json!({}), &SOURCE_ONLY).await;
    let arrived = arrive(Reached::InProgress, json!({})).await;
    arrived
        .app
        .action(MIGRATION, "cancel")
        .await
        .ok::<Migration>();
    assert_row(&arrived.app, Some(MIGRATION), &SOURCE_ONLY).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rolled_back_routes_to_the_source_and_keeps_window_writes() {
    let Arrived { app, .. } = arrive(Reached::Completed, json!({})).await;
    let during = app
        .put_document("in-window", "written during the rollback window")
        .await;
    app.action(MIGRATION, "rollback").await.ok::<Migration>();
    assert_row(&app, Some(MIGRATION), &SOURCE_ONLY).await;
    let doc = app.get_document("in-window").await;
    assert!(
        doc.is_current_in("hash-v1"),
        "the window wrote the source model: {doc:?}"
    );
    let query = app.query("written during the rollback window", 1).await;
    assert_eq!(query.hit_ids(), ["in-window"], "{during:?}");
}

/// Coverage, not a pause or a timer, moves queries: the first five documents (ids sorting
/// first) are backfilled, the last five are held, so coverage rests at exactly 0.5.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn queries_move_to_the_target_when_coverage_reaches_the_threshold() {
    let probe = Probe::new();
    probe.hold();
    let app = TestApp::with_models(probe.registry()).await;
    let free = (0..5).map(|i| (format!("a-{i}"), format!("free text {i}")));
    let held = (0..5).map(|i| (format!("z-{i}"), format!("{HELD} text {i}")));
    app.bulk(&free.chain(held).collect::<Vec<_>>()).await;
    let config = json!({ "batch_size": 5, "max_concurrent": 1, "target_query_threshold": 0.6 });
    let body = json!({ "id": MIGRATION, "target_model": "hash-v2", "config": config });
    app.start_migration(&body).await;
    eventually(Duration::from_secs(60), "coverage 0.5", || async {
        let p = app.progress(MIGRATION).await;
        (p.processed == 5).then_some(()).ok_or(format!("{p:?}"))
    })
    .await;
    let progress = app.progress(MIGRATION).await;
    assert_eq!(
        (progress.total, progress.coverage, progress.state.as_str()),
        (10, 0.5, "in_progress")
    );
    assert_eq!(progress.query_route, "legacy", "0.5 < threshold 0.6");
    assert_row(&app, Some(MIGRATION), &MIGRATING_DUAL).await;

    app.patch_config(MIGRATION, &json!({ "target_query_threshold": 0.5 }))
        .await
        .ok::<Migration>();
    assert_eq!(
        app.progress(MIGRATION).await.query_route,
        "target",
        "0.5 >= threshold 0.5"
    );
    assert_row(&app, Some(MIGRATION), &MIGRATING_ON_TARGET).await;
    probe.release();
}
