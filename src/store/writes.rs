//! What a document write or delete does inside its transaction, the same on every backend:
//! each write is planned against the latest migration (`domain::queue::plan`) before anything
//! is written, so a refused write changes nothing; then each document is upserted one version
//! up and the plan carried out on the queue; the counts move by what the queue reported, last.
//! A write that keeps stored vectors (`Kept`) is checked against the document as the
//! transaction finds it before it is upserted, and its kept vectors are re-stamped after; a
//! kept target vector counts for the queue exactly as a given one. A failed check is a
//! `Conflict`, and the transaction, dropped uncommitted, changes nothing.
//! Each backend supplies the operations on its own transaction ([`DocumentTx`]).

use async_trait::async_trait;

use super::{
    CountsDelta, DocumentWrite, Kept, OverInputLimit, StoreError, WriteOutcome, WriteReceipt,
};
use crate::domain::queue::{self, QueueChange, QueueStep, QueueView};

/// A backend's write transaction, as the shared write path sees it.
#[async_trait]
pub(crate) trait DocumentTx: Send {
    /// Upserts the document one version up (a new one continues from its tombstone) with its
    /// vectors at that version; returns the version.
    async fn upsert_document(&mut self, write: &DocumentWrite) -> Result<u64, StoreError>;
    /// The stored version and text of the document, `None` if it does not exist: what a keep
    /// is checked against.
    async fn stored_text(&mut self, id: &str) -> Result<Option<(u64, String)>, StoreError>;
    /// Moves the document's vectors of `kept.models` still at `kept.version` to `version`, in
    /// place; how many it moved.
    async fn restamp_vectors(
        &mut self,
        id: &str,
        kept: &Kept,
        version: u64,
    ) -> Result<usize, StoreError>;
    /// Deletes the document, its vectors and any queue entry, and remembers `version`.
    async fn remove_document(&mut self, id: &str, version: u64) -> Result<(), StoreError>;
    /// Queues the document; whether it was not queued yet.
    async fn enqueue(&mut self, migration_id: &str, doc_id: &str) -> Result<bool, StoreError>;
    /// Takes the document off the queue: whether its latest attempt had failed, or `None` if
    /// it was not queued.
    async fn dequeue(
        &mut self,
        migration_id: &str,
        doc_id: &str,
    ) -> Result<Option<bool>, StoreError>;
    /// Moves the migration's counts by `delta`.
    async fn add_counts(
        &mut self,
        migration_id: &str,
        delta: CountsDelta,
    ) -> Result<(), StoreError>;
}

/// Writes `writes` in `tx`, following the queue of `latest` (the newest migration as the
/// transaction read it); `Conflict` before anything is written when the plan refuses one.
pub(crate) async fn write_documents<T: DocumentTx>(
    tx: &mut T,
    latest: Option<&QueueView>,
    writes: &[DocumentWrite],
    over_input_limit: OverInputLimit<'_>,
) -> Result<WriteReceipt, StoreError> {
    let steps = plan_writes(latest, writes)?;
    let followed = latest.filter(|m| m.follows_writes());
    let mut delta = CountsDelta::default();
    let mut outcomes = Vec::with_capacity(writes.len());
    for (write, step) in writes.iter().zip(steps) {
        if let Some(kept) = &write.kept {
            check_kept(tx, write, kept).await?;
        }
        let version = tx.upsert_document(write).await?;
        if let Some(kept) = &write.kept {
            restamp_kept(tx, write, kept, version).await?;
        }
        if let Some(migration) = followed
            && let Some(change) = follow_write(tx, migration, write, step, over_input_limit).await?
        {
            delta = delta.then(change.delta());
        }
        outcomes.push(WriteOutcome {
            id: write.id.clone(),
            version,
        });
    }
    Ok(WriteReceipt {
        outcomes,
        migration: add_counts(tx, followed, delta).await?,
    })
}

/// Deletes the document `id`, at `version`, in `tx`, taking it off the queue of `latest`.
pub(crate) async fn delete_document<T: DocumentTx>(
    tx: &mut T,
    latest: Option<&QueueView>,
    id: &str,
    version: u64,
) -> Result<WriteReceipt, StoreError> {
    let followed = latest.filter(|m| m.follows_writes());
    let mut delta = CountsDelta::default();
    if let Some(migration) = followed
        && let Some(had_failed) = tx.dequeue(&migration.id, id).await?
    {
        delta = QueueChange::Deleted { had_failed }.delta();
    }
    tx.remove_document(id, version).await?;
    Ok(WriteReceipt {
        outcomes: Vec::new(),
        migration: add_counts(tx, followed, delta).await?,
    })
}

/// Each write's step on the queue, all planned before any is written.
fn plan_writes(
    latest: Option<&QueueView>,
    writes: &[DocumentWrite],
) -> Result<Vec<QueueStep>, StoreError> {
    writes
        .iter()
        .map(|write| {
            let carries = latest.is_some_and(|m| write.carries(&m.target_model));
            queue::plan(latest, &write.id, carries)
                .map_err(|refused| StoreError::Conflict(refused.to_string()))
        })
        .collect()
}

/// `Conflict` unless the document is still at the version and text `kept` was read from.
async fn check_kept<T: DocumentTx>(
    tx: &mut T,
    write: &DocumentWrite,
    kept: &Kept,
) -> Result<(), StoreError> {
    let stored = tx.stored_text(&write.id).await?;
    let stored = stored.as_ref().map(|(v, text)| (*v, text.as_str()));
    if kept.still_holds(stored, &write.text) {
        return Ok(());
    }
    Err(StoreError::Conflict(format!(
        "document {} changed since its vectors at version {} were read to be kept",
        write.id, kept.version
    )))
}

/// Moves the kept vectors to `version`; `Conflict` if one of them is no longer at the version
/// it was read at (changed or deleted by another transaction).
async fn restamp_kept<T: DocumentTx>(
    tx: &mut T,
    write: &DocumentWrite,
    kept: &Kept,
    version: u64,
) -> Result<(), StoreError> {
    let moved = tx.restamp_vectors(&write.id, kept, version).await?;
    if moved == kept.models.len() {
        return Ok(());
    }
    Err(StoreError::Conflict(format!(
        "a kept vector of document {} left version {} before the write",
        write.id, kept.version
    )))
}

/// Carries out a write's `step` on the followed migration's queue and reports the change: a
/// satisfied entry is taken off (truncated when `over_input_limit` says the target embedded
/// the text truncated); a document lacking a current target vector is queued.
async fn follow_write<T: DocumentTx>(
    tx: &mut T,
    migration: &QueueView,
    write: &DocumentWrite,
    step: QueueStep,
    over_input_limit: OverInputLimit<'_>,
) -> Result<Option<QueueChange>, StoreError> {
    Ok(match step {
        QueueStep::Leave => None,
        QueueStep::Enqueue => Some(QueueChange::Queued {
            newly: tx.enqueue(&migration.id, &write.id).await?,
        }),
        QueueStep::Dequeue => tx
            .dequeue(&migration.id, &write.id)
            .await?
            .map(|had_failed| QueueChange::Embedded {
                had_failed,
                truncated: over_input_limit(&migration.target_model, &write.text),
            }),
    })
}

/// Persists a non-zero delta on the followed migration and reports it for the receipt.
async fn add_counts<T: DocumentTx>(
    tx: &mut T,
    migration: Option<&QueueView>,
    delta: CountsDelta,
) -> Result<Option<(String, CountsDelta)>, StoreError> {
    let Some(migration) = migration.filter(|_| !delta.is_zero()) else {
        return Ok(None);
    };
    tx.add_counts(&migration.id, delta).await?;
    Ok(Some((migration.id.clone(), delta)))
}
