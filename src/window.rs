//! The rollback-window timer: when a completed migration's window ends, the target becomes
//! the active model. Routing already switches at the deadline on its own (it compares the
//! persisted `rollback_window_ends_at` with the clock on every call); this task records the
//! new active model in the store so a restart, and later migrations, start from it.

use std::sync::Arc;
use std::time::Duration;

use chrono::Utc;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use crate::coordinator::Coordinator;
use crate::supervise::spawn_supervised;

/// Pause before recording the active model again after the store refused it.
const RETRY_DELAY: Duration = Duration::from_secs(1);

/// Runs the timer on `tracker` until `shutdown`, started again if it panics.
pub fn spawn(coordinator: Arc<Coordinator>, tracker: &TaskTracker, shutdown: CancellationToken) {
    let stop = shutdown.clone();
    spawn_supervised("rollback-window", tracker, shutdown, move || {
        run(coordinator.clone(), stop.clone())
    });
}

async fn run(coordinator: Arc<Coordinator>, shutdown: CancellationToken) {
    let mut changes = coordinator.subscribe();
    loop {
        changes.borrow_and_update();
        let now = Utc::now();
        let until_deadline = match coordinator.settle_active_model(now).await {
            Ok(()) => coordinator
                .latest()
                .filter(|m| m.window_open(now))
                .and_then(|m| m.rollback_window_ends_at)
                .and_then(|end| (end - now).to_std().ok()),
            Err(error) => {
                tracing::warn!(%error, "could not record the active model; will retry");
                Some(RETRY_DELAY)
            }
        };
        tokio::select! {
            _ = shutdown.cancelled() => break,
            _ = changes.changed() => {}
            _ = tokio::time::sleep(until_deadline.unwrap_or_default()), if until_deadline.is_some() => {}
        }
    }
}
