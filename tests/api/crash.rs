//! Crash safety with the real binary (DESIGN.md invariants 4 and 5): SIGKILL in the middle of
//! a backfill, and a graceful SIGTERM. The restarted process resumes the migration by itself,
//! keeps every acknowledged write, and counts no document twice.

use std::time::Duration;

use crate::backfill::{assert_all_current_in_target, follow_to_completion};
use crate::helpers::{Api, PATIENCE, corpus, eventually};
use crate::process::ServerProcess;
use crate::wire::{Progress, Written};

/// Serial batches of ten: the backfill of a large corpus takes seconds, long enough to land
/// a kill in the middle of it.
const SLOW_MIGRATION: &str = r#"{"id": "m", "target_model": "hash-v2",
                                 "config": {"batch_size": 10, "max_concurrent": 1}}"#;

/// Loads `n` documents, starts the slow migration, waits until some are processed, then
/// rewrites a few documents at both ends of the queue and returns their acknowledgements
/// and the last progress seen.
async fn migrate_and_write(api: &Api, n: usize) -> (Vec<Written>, Progress) {
    api.load(&corpus("doc", n), 1000).await;
    api.start_migration(&serde_json::from_str(SLOW_MIGRATION).unwrap())
        .await;
    eventually(PATIENCE, "the backfill to get going", || async {
        let p = api.progress("m").await;
        (p.processed > 0).then_some(()).ok_or(format!("{p:?}"))
    })
    .await;
    let mut acked = Vec::new();
    for i in [0, 1, n - 2, n - 1] {
        let id = format!("doc-{i:06}");
        acked.push(
            api.put_document(&id, &format!("acknowledged rewrite of {id}"))
                .await,
        );
    }
    (acked, api.progress("m").await)
}

async fn assert_acknowledged_writes_kept(api: &Api, acked: &[Written]) {
    for written in acked {
        let doc = api.get_document(&written.id).await;
        assert_eq!(
            doc.version, written.version,
            "acknowledged version lost: {doc:?}"
        );
        assert_eq!(doc.text, format!("acknowledged rewrite of {}", written.id));
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigkill_mid_backfill_resumes_without_losing_or_double_counting() {
    const DOCS: u64 = 20_000;
    let dir = tempfile::tempdir().unwrap();
    let server = ServerProcess::start(dir.path()).await;
    let (acked, seen) = migrate_and_write(&server, DOCS as usize).await;
    assert_eq!(seen.state, "in_progress", "{seen:?}");
    assert!(
        0 < seen.processed && seen.processed < seen.total,
        "kill must land mid-backfill: {seen:?}"
    );
    server.kill();

    let server = ServerProcess::start(dir.path()).await;
    let resumed = server.progress("m").await;
    assert_eq!(
        resumed.state, "in_progress",
        "the migration resumes by itself: {resumed:?}"
    );
    assert!(
        resumed.processed >= seen.processed,
        "counts ran backwards: {seen:?} -> {resumed:?}"
    );
    assert_eq!(resumed.total, seen.total, "{seen:?} -> {resumed:?}");

    let done = follow_to_completion(&server, "m", Duration::from_secs(900)).await;
    assert_eq!(
        (done.total, done.processed, done.skipped),
        (DOCS, DOCS, 0),
        "{done:?}"
    );
    assert_eq!(done.processed + done.skipped, done.total);
    assert_acknowledged_writes_kept(&server, &acked).await;
    let all = assert_all_current_in_target(&server).await;
    assert_eq!(all.len() as u64, DOCS);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_exits_zero_and_a_restart_sees_everything() {
    const DOCS: u64 = 5_000;
    let dir = tempfile::tempdir().unwrap();
    let server = ServerProcess::start(dir.path()).await;
    let (acked, seen) = migrate_and_write(&server, DOCS as usize).await;
    let status = server.terminate(Duration::from_secs(60)).await;
    assert!(status.success(), "SIGTERM should exit 0, got {status:?}");

    let server = ServerProcess::start(dir.path()).await;
    let resumed = server.progress("m").await;
    assert!(
        ["in_progress", "completed"].contains(&resumed.state.as_str()),
        "{resumed:?}"
    );
    assert!(
        resumed.processed >= seen.processed,
        "counts ran backwards: {seen:?} -> {resumed:?}"
    );
    assert_acknowledged_writes_kept(&server, &acked).await;
    let done = follow_to_completion(&server, "m", Duration::from_secs(600)).await;
    assert_eq!(
        (done.total, done.processed, done.skipped),
        (DOCS, DOCS, 0),
        "{done:?}"
    );
    let all = assert_all_current_in_target(&server).await;
    assert_eq!(all.len() as u64, DOCS);
    let ids: Vec<String> = server
        .migrations()
        .await
        .into_iter()
        .map(|m| m.id)
        .collect();
    assert_eq!(ids, ["m"]);
}
