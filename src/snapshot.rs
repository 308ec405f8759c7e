//! The routing snapshot of a replica sharing its store with others (PostgreSQL): every
//! replica serves routing from its own in-memory view of the newest migration, and this task
//! keeps that view within about a second of the database.
//!
//! It refreshes the view (`Coordinator::refresh`) when another replica announces a change
//! (LISTEN/NOTIFY, `Store::wait_for_migration_change`), soon after this replica's own batches
//! and writes move the counts (`Coordinator::counts_moved`), and at least once per `POLL`. The
//! notification only makes a change arrive sooner: notifications are lost while the listener
//! reconnects, and LISTEN does not work through a pooler in transaction mode (PgBouncer), so
//! the poll is what guarantees the bound. Correctness never depends on the view's age: every
//! write's transaction reads the migration row itself (`store::postgres`).

use std::sync::Arc;
use std::time::Duration;

use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use crate::coordinator::Coordinator;
use crate::store::Store;
use crate::supervise::spawn_supervised;

/// The longest the view goes without being read again from the database.
const POLL: Duration = Duration::from_secs(1);

/// The least time between two refreshes that this process's own commits ask for: counts move
/// with every batch, and a few reads a second keep progress current.
const COUNTS_DEBOUNCE: Duration = Duration::from_millis(100);

/// Runs the refresher on `tracker` until `shutdown`, for a store other processes share;
/// nothing for one this process owns alone (SQLite), whose view it keeps itself.
pub fn spawn(
    coordinator: Arc<Coordinator>,
    store: Arc<dyn Store>,
    tracker: &TaskTracker,
    shutdown: CancellationToken,
) {
    if !store.is_shared() {
        return;
    }
    let stop = shutdown.clone();
    spawn_supervised("routing-snapshot", tracker, shutdown, move || {
        run(coordinator.clone(), store.clone(), stop.clone())
    });
}

async fn run(coordinator: Arc<Coordinator>, store: Arc<dyn Store>, shutdown: CancellationToken) {
    loop {
        if let Err(error) = coordinator.refresh().await {
            tracing::warn!(%error, "cannot refresh the routing snapshot; will retry");
        }
        tokio::select! {
            _ = shutdown.cancelled() => break,
            _ = store.wait_for_migration_change(POLL) => {}
            _ = coordinator.counts_moved() => tokio::time::sleep(COUNTS_DEBOUNCE).await,
        }
    }
}
