//! A full disk (API.md 503, `/readyz`): while the data directory's file system is full, writes
//! answer 503 naming the disk and `/readyz` does too; nothing acknowledged is lost; once space
//! is freed, writes and deletes work again by themselves and `/readyz` follows. The data
//! directory is a small tmpfs; where mounting is refused (not root), the test says so and
//! passes without running.

use std::path::PathBuf;
use std::process::Command;
use std::time::Duration;

use serde_json::{Value, json};
use tempfile::TempDir;

use crate::helpers::{Reply, TestApp, eventually};

/// The file system: room for the ballast and some hundreds of documents.
const FILESYSTEM: &str = "size=12m";
/// Freed to make room again.
const BALLAST_BYTES: usize = 4 * 1024 * 1024;
/// Documents per bulk request, each about 4 KB of text.
const CHUNK: usize = 25;
const RECOVERY: Duration = Duration::from_secs(30);

/// A tmpfs mounted on a temporary directory for as long as it lives.
struct Tmpfs {
    mount: TempDir,
}

impl Tmpfs {
    fn mount() -> Option<Tmpfs> {
        let mount = tempfile::tempdir().expect("a mount point");
        let mounted = Command::new("mount")
            .args(["-t", "tmpfs", "-o", FILESYSTEM, "tmpfs"])
            .arg(mount.path())
            .status()
            .is_ok_and(|status| status.success());
        mounted.then_some(Tmpfs { mount })
    }

    fn path(&self, name: &str) -> PathBuf {
        self.mount.path().join(name)
    }
}

impl Drop for Tmpfs {
    fn drop(&mut self) {
        let _ = Command::new("umount")
            .arg("-l")
            .arg(self.mount.path())
            .status();
    }
}

#[tokio::test]
async fn a_full_disk_refuses_writes_loses_nothing_and_recovers_when_space_is_freed() {
    if crate::store::on_postgres() {
        // The disk that fills is the PostgreSQL server's, not this process's.
        return;
    }
    let Some(tmpfs) = Tmpfs::mount() else {
        eprintln!(
            "skipped: cannot mount a tmpfs here (needs root); the full-disk test did not run"
        );
        return;
    };
    std::fs::write(tmpfs.path("ballast"), vec![7u8; BALLAST_BYTES]).expect("the ballast");
    let data_dir = tmpfs.path("data");
    let app = TestApp::with_config(reembed::embed::ModelRegistry::builtin(), |config| {
        config.data_dir = data_dir.clone();
    })
    .await;
    assert_eq!(app.get("/readyz").await.status, 200);

    let (acknowledged, refusal) = fill_until_refused(&app).await;
    assert!(!acknowledged.is_empty(), "the disk filled before any write");
    let problem = refusal.problem(503, "unavailable");
    assert!(
        problem
            .detail
            .as_deref()
            .unwrap_or_default()
            .contains("full"),
        "the refusal names the disk: {problem:?}"
    );
    let ready = app.get("/readyz").await;
    assert!(
        ready
            .problem(503, "unavailable")
            .detail
            .unwrap_or_default()
            .contains("full"),
        "readiness says why writes fail: {ready}"
    );
    assert_eq!(app.get("/healthz").await.status, 200, "still alive");

    std::fs::remove_file(tmpfs.path("ballast")).expect("space freed");
    eventually(RECOVERY, "writes to work again by themselves", || async {
        let reply = app
            .put_document_reply("after-the-disk-filled", &json!({"text": "room again"}))
            .await;
        (reply.status == 200)
            .then_some(())
            .ok_or(format!("{reply}"))
    })
    .await;
    assert_eq!(app.get("/readyz").await.status, 200, "ready again");
    assert_eq!(
        app.delete(&acknowledged[0]).await.status,
        204,
        "deletes work again"
    );

    assert_all_readable(&app, &acknowledged[1..]).await;
    app.stop().await;
    drop(tmpfs);
}

/// Bulk-writes documents until the server refuses; returns the ids it acknowledged and the
/// refusal.
async fn fill_until_refused(app: &TestApp) -> (Vec<String>, Reply) {
    let text = "the quick brown fox jumps over the lazy dog ".repeat(90);
    let mut acknowledged = Vec::new();
    for chunk in 0.. {
        let documents: Vec<Value> = (0..CHUNK)
            .map(|i| json!({"id": format!("fill-{chunk:04}-{i:02}"), "text": text}))
            .collect();
        let reply = app.bulk_reply(&json!({"documents": documents})).await;
        if reply.status != 200 {
            return (acknowledged, reply);
        }
        acknowledged.extend(
            documents
                .iter()
                .map(|d| d["id"].as_str().unwrap().to_owned()),
        );
        assert!(chunk < 10_000, "the disk never filled");
    }
    unreachable!("the loop returns")
}

async fn assert_all_readable(app: &TestApp, ids: &[String]) {
    let stored = app.all_documents(1000).await;
    let stored: std::collections::BTreeSet<&str> = stored.iter().map(|d| d.id.as_str()).collect();
    for id in ids {
        assert!(stored.contains(id.as_str()), "acknowledged {id} was lost");
    }
}
