//! Deletes the source model's vectors once a migration's target is the active model (its
//! rollback window over, so rollback can no longer need them), unless the migration's config
//! retains them: in bounded batches in the background, each a transaction of its own, so
//! writes and queries never wait behind one long delete. The in-memory index follows each
//! batch and gives its memory back at the end; on PostgreSQL the model's HNSW index is dropped.
//! A restart resumes where the store's count stands; on PostgreSQL several replicas may share
//! the work (each batch skips rows another is deleting).

use std::sync::Arc;
use std::time::Duration;

use chrono::Utc;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use crate::coordinator::Coordinator;
use crate::domain::{Actor, Cause, Migration};
use crate::embed::ModelRegistry;
use crate::index::IndexSet;
use crate::store::{CleanupStep, Store, StoreError};
use crate::supervise::spawn_supervised;

/// Vectors deleted per transaction: a write waits behind at most this many row deletions.
const BATCH: u32 = 1000;
/// Rest between batches, so the deletion takes a small share of the store's writer.
const BETWEEN_BATCHES: Duration = Duration::from_millis(5);
/// How often to look again when nothing says a migration changed (a window ends by the clock).
const POLL: Duration = Duration::from_secs(1);
/// Pause after the store refused a batch.
const RETRY_DELAY: Duration = Duration::from_secs(1);

/// What the cleanup works with.
#[derive(Clone)]
pub struct Cleanup {
    pub coordinator: Arc<Coordinator>,
    pub store: Arc<dyn Store>,
    /// The in-memory indexes, when this process keeps them (SQLite).
    pub indexes: Option<Arc<IndexSet>>,
    pub models: ModelRegistry,
    /// Names this replica in the history entry of the end of a deletion.
    pub replica: String,
}

impl Cleanup {
    /// Runs the cleanup on `tracker` until `shutdown`, started again if it panics.
    pub fn spawn(self, tracker: &TaskTracker, shutdown: CancellationToken) {
        let stop = shutdown.clone();
        spawn_supervised("source-cleanup", tracker, shutdown, move || {
            self.clone().run(stop.clone())
        });
    }

    async fn run(self, shutdown: CancellationToken) {
        let mut changes = self.coordinator.subscribe();
        loop {
            changes.borrow_and_update();
            let pause = match self.coordinator.due_for_cleanup(Utc::now()) {
                Some(migration) => match self.delete_all(&migration, &shutdown).await {
                    Ok(()) => POLL,
                    Err(error) => {
                        tracing::warn!(%error, "could not delete the source vectors; will retry");
                        RETRY_DELAY
                    }
                },
                None => POLL,
            };
            tokio::select! {
                _ = shutdown.cancelled() => break,
                _ = changes.changed() => {}
                _ = tokio::time::sleep(pause) => {}
            }
        }
    }

    /// Deletes `migration`'s source vectors batch by batch until none is left, a newer
    /// migration supersedes it, or `shutdown`.
    async fn delete_all(
        &self,
        migration: &Migration,
        shutdown: &CancellationToken,
    ) -> Result<(), StoreError> {
        let source = &migration.source_model;
        let cause = Cause {
            replica: self.replica.clone(),
            actor: Actor::Service,
        };
        tracing::info!(migration = %migration.id, model = %source, "deleting the source model's vectors");
        while !shutdown.is_cancelled() {
            match self
                .store
                .delete_source_vectors(migration, BATCH, &cause)
                .await?
            {
                CleanupStep::Deleted(ids) => {
                    if let Some(indexes) = &self.indexes {
                        indexes.remove_vectors(source, &ids);
                    }
                    let deleted = ids.len() as u64;
                    self.coordinator
                        .cleanup_progressed(&migration.id, deleted, false)
                        .await;
                    tokio::time::sleep(BETWEEN_BATCHES).await;
                }
                CleanupStep::Done => {
                    self.free_index(source).await?;
                    self.coordinator
                        .cleanup_progressed(&migration.id, 0, true)
                        .await;
                    tracing::info!(model = %source, "source vectors deleted; index freed");
                    return Ok(());
                }
                CleanupStep::Superseded => return Ok(()),
            }
        }
        Ok(())
    }

    /// Gives `model`'s index memory back: in this process, or in the database.
    async fn free_index(&self, model: &str) -> Result<(), StoreError> {
        if let Some(indexes) = &self.indexes {
            indexes.compact(model);
        }
        let dimensions = self.models.get(model).map(|embedder| embedder.dimensions());
        match (self.store.vector_search(), dimensions) {
            (Some(search), Some(dimensions)) => search.drop_index(model, dimensions).await,
            _ => Ok(()),
        }
    }
}
