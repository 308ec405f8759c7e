//! A fresh server with one migration in a chosen state, reached only through the API.
//!
//! The corpus is three documents whose texts carry the probe's `HELD` marker, so while the
//! probe is held a started migration stays `in_progress` with its first batch in flight.
//! The returned probe is still held in `planned`, `in_progress`, `paused` and `cancelled`.

use std::fmt;
use std::time::Duration;

use serde_json::{Value, json};

use crate::helpers::{PATIENCE, TestApp};
use crate::probe::{HELD, Probe};
use crate::wire::Migration;

/// Id of the migration `arrive` creates.
pub const MIGRATION: &str = "mig-1";

/// A state of API.md's state table; `Finalized` is `completed` with its window ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Reached {
    Planned,
    InProgress,
    Paused,
    Failed,
    Completed,
    Finalized,
    Cancelled,
    RolledBack,
}

impl Reached {
    /// The `state` the API reports.
    pub fn state(self) -> &'static str {
        match self {
            Self::Planned => "planned",
            Self::InProgress => "in_progress",
            Self::Paused => "paused",
            Self::Failed => "failed",
            Self::Completed | Self::Finalized => "completed",
            Self::Cancelled => "cancelled",
            Self::RolledBack => "rolled_back",
        }
    }

    /// Open migrations block a new one (API.md: 409 `migration-open`).
    pub fn is_open(self) -> bool {
        !matches!(self, Self::Finalized | Self::Cancelled | Self::RolledBack)
    }
}

impl fmt::Display for Reached {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{self:?}")
    }
}

/// The server, its probe (held unless the state needed it released) and the migration.
pub struct Arrived {
    pub app: TestApp,
    pub probe: Probe,
    pub migration: Migration,
}

/// What the probe does to backfill batches on the way to a state.
#[derive(Clone, Copy)]
enum Provider {
    Held,
    Open,
    Down,
}

/// The way to each state: whether `POST /v1/migrations` starts it, the provider, the state
/// to wait for, then the call to make.
fn path_to(state: Reached) -> (bool, Provider, Option<&'static str>, Option<&'static str>) {
    use Provider::*;
    match state {
        Reached::Planned => (false, Held, None, None),
        Reached::InProgress => (true, Held, None, None),
        Reached::Paused => (true, Held, None, Some("pause")),
        Reached::Failed => (true, Down, Some("failed"), None),
        Reached::Completed => (true, Open, Some("completed"), None),
        Reached::Finalized => (true, Open, Some("completed"), Some("finalize")),
        Reached::Cancelled => (false, Held, None, Some("cancel")),
        Reached::RolledBack => (true, Open, Some("completed"), Some("rollback")),
    }
}

/// Reaches `state` with a migration to hash-v2 configured by `config`.
pub async fn arrive(state: Reached, config: Value) -> Arrived {
    let (start, provider, settle, then) = path_to(state);
    let probe = Probe::new();
    if !matches!(provider, Provider::Open) {
        probe.hold();
    }
    // A provider down for a second is down for good here, so `failed` comes quickly.
    let patience = Duration::from_secs(1);
    let app = TestApp::with_config(probe.registry(), |c| c.provider_patience = patience).await;
    let docs: Vec<(String, String)> = (1..=3)
        .map(|i| (format!("doc-{i}"), format!("{HELD} document number {i}")))
        .collect();
    app.bulk(&docs).await;
    let body =
        json!({ "id": MIGRATION, "target_model": "hash-v2", "config": config, "start": start });
    app.start_migration(&body).await;
    if let Provider::Down = provider {
        // Creation checks the provider (503 when down), so it goes down under the held batch.
        probe.fail(true);
        probe.release();
    }
    if let Some(settled) = settle {
        app.wait_for_state(MIGRATION, settled, PATIENCE).await;
    }
    if let Some(action) = then {
        app.action(MIGRATION, action).await.ok::<Migration>();
    }
    let migration = app.migration(MIGRATION).await;
    assert_eq!(migration.state, state.state(), "could not reach {state}");
    Arrived {
        app,
        probe,
        migration,
    }
}
