//! The backfill queue in PostgreSQL: reading queued documents, committing a batch with its
//! compare-and-set, recording failed attempts and skips, and the queue operations the write
//! path shares; every count change comes from `domain::queue` and moves in the same
//! transaction as the rows it counts, as that transaction's last statement.

use chrono::{DateTime, Utc};

use super::codec::{decode_claimed, decode_skip, sql_int, store_error};
use super::documents::upsert_vector;
use super::{PostgresStore, Tx};
use crate::domain::{QueueChange, QueueView};
use crate::store::{BatchItem, BatchReceipt, ClaimedDocument, CountsDelta, Skip, StoreError};

/// [`Store::queued_documents`](crate::store::Store::queued_documents) on PostgreSQL.
pub(super) async fn queued_documents(
    store: &PostgresStore,
    migration_id: &str,
    after: &str,
    limit: u32,
) -> Result<Vec<ClaimedDocument>, StoreError> {
    let rows = sqlx::query(
        "SELECT d.id, d.text, d.version FROM backfill_queue q JOIN documents d ON d.id = q.doc_id
         WHERE q.migration_id = $1 AND q.doc_id > $2 ORDER BY q.doc_id LIMIT $3",
    )
    .bind(migration_id)
    .bind(after)
    .bind(i64::from(limit))
    .fetch_all(&store.pool)
    .await
    .map_err(store_error)?;
    rows.iter().map(decode_claimed).collect()
}

/// [`Store::commit_batch_until`](crate::store::Store::commit_batch_until) on PostgreSQL.
pub(super) async fn commit_batch_until(
    store: &PostgresStore,
    migration_id: &str,
    target_model: &str,
    items: &[BatchItem],
    stop: &(dyn Fn(usize) -> bool + Send + Sync),
) -> Result<(BatchReceipt, usize), StoreError> {
    for item in items {
        if let BatchItem::Embedded { vector, .. } = item {
            super::codec::check_vector(target_model, vector)?;
        }
    }
    let mut tx = store.begin_write().await?;
    lock_batch_documents(&mut tx, items).await?;
    let batch = Batch {
        migration_id,
        target_model,
        now: Utc::now(),
    };
    let mut receipt = BatchReceipt::default();
    let mut committed = 0;
    for item in items {
        if committed > 0 && stop(committed) {
            break;
        }
        commit_item(&mut tx, batch, item, &mut receipt).await?;
        committed += 1;
    }
    if !receipt.delta.is_zero() {
        apply_delta(&mut tx, migration_id, receipt.delta).await?;
    }
    tx.commit().await.map_err(store_error)?;
    Ok((receipt, committed))
}

/// [`Store::record_failures`](crate::store::Store::record_failures) on PostgreSQL.
pub(super) async fn record_failures(
    store: &PostgresStore,
    migration_id: &str,
    doc_ids: &[String],
) -> Result<CountsDelta, StoreError> {
    let mut tx = store.begin_write().await?;
    let mut delta = CountsDelta::default();
    for doc_id in doc_ids {
        let flagged = sqlx::query(
            "UPDATE backfill_queue SET failed = true
             WHERE migration_id = $1 AND doc_id = $2 AND NOT failed",
        )
        .bind(migration_id)
        .bind(doc_id)
        .execute(&mut *tx)
        .await
        .map_err(store_error)?;
        let newly = flagged.rows_affected() > 0;
        delta = delta.then(QueueChange::Failed { newly }.delta());
    }
    if !delta.is_zero() {
        apply_delta(&mut tx, migration_id, delta).await?;
    }
    tx.commit().await.map_err(store_error)?;
    Ok(delta)
}

/// [`Store::skips`](crate::store::Store::skips) on PostgreSQL.
pub(super) async fn skips(
    store: &PostgresStore,
    migration_id: &str,
) -> Result<Vec<Skip>, StoreError> {
    let rows =
        sqlx::query("SELECT doc_id, reason, at FROM skips WHERE migration_id = $1 ORDER BY seq")
            .bind(migration_id)
            .fetch_all(&store.pool)
            .await
            .map_err(store_error)?;
    rows.iter().map(decode_skip).collect()
}

/// [`Store::requeue_skips`](crate::store::Store::requeue_skips) on PostgreSQL.
pub(super) async fn requeue_skips(
    store: &PostgresStore,
    migration_id: &str,
) -> Result<CountsDelta, StoreError> {
    let mut tx = store.begin_write().await?;
    let requeued = sqlx::query(
        "INSERT INTO backfill_queue (migration_id, doc_id)
         SELECT DISTINCT s.migration_id, s.doc_id FROM skips s
         JOIN documents d ON d.id = s.doc_id
         WHERE s.migration_id = $1
         ON CONFLICT DO NOTHING",
    )
    .bind(migration_id)
    .execute(&mut *tx)
    .await
    .map_err(store_error)?
    .rows_affected();
    let listed = sqlx::query("DELETE FROM skips WHERE migration_id = $1")
        .bind(migration_id)
        .execute(&mut *tx)
        .await
        .map_err(store_error)?
        .rows_affected();
    let delta = QueueChange::SkipsRequeued { listed, requeued }.delta();
    if !delta.is_zero() {
        apply_delta(&mut tx, migration_id, delta).await?;
    }
    tx.commit().await.map_err(store_error)?;
    Ok(delta)
}

/// The fixed context of one `commit_batch` call.
#[derive(Clone, Copy)]
struct Batch<'a> {
    migration_id: &'a str,
    target_model: &'a str,
    now: DateTime<Utc>,
}

/// Locks the batch's documents against writes and deletes (`FOR SHARE`), in id order as
/// writes lock theirs, so that each compare-and-set below reads a version no concurrent
/// transaction can change before this one commits.
async fn lock_batch_documents(tx: &mut Tx, items: &[BatchItem]) -> Result<(), StoreError> {
    let ids: Vec<&str> = items
        .iter()
        .map(|item| match item {
            BatchItem::Embedded { id, .. } | BatchItem::Skipped { id, .. } => id.as_str(),
        })
        .collect();
    sqlx::query("SELECT id FROM documents WHERE id = ANY($1) ORDER BY id FOR SHARE")
        .bind(ids)
        .execute(&mut **tx)
        .await
        .map_err(store_error)?;
    Ok(())
}

async fn commit_item(
    tx: &mut Tx,
    batch: Batch<'_>,
    item: &BatchItem,
    receipt: &mut BatchReceipt,
) -> Result<(), StoreError> {
    match item {
        BatchItem::Embedded {
            id,
            version,
            vector,
            truncated,
        } => {
            let dequeued = dequeue_if_current(tx, batch.migration_id, id, *version).await?;
            if let Some(had_failed) = dequeued {
                upsert_vector(tx, batch.target_model, id, *version, vector).await?;
                receipt.written.push((id.clone(), *version));
                let change = QueueChange::Embedded {
                    had_failed,
                    truncated: *truncated,
                };
                receipt.delta = receipt.delta.then(change.delta());
            }
        }
        BatchItem::Skipped { id, reason } => {
            if let Some(had_failed) = dequeue(tx, batch.migration_id, id).await? {
                insert_skip(tx, batch, id, reason).await?;
                receipt.delta = receipt
                    .delta
                    .then(QueueChange::Skipped { had_failed }.delta());
            }
        }
    }
    Ok(())
}

/// The compare-and-set of a backfilled vector (invariant 3): takes the document off the queue
/// only if it is still queued and still at `version`. If the version moved on, the newer write
/// either carried the target vector (and already dequeued and counted the document) or left it
/// queued for a later batch to embed the newer text.
async fn dequeue_if_current(
    tx: &mut Tx,
    migration_id: &str,
    doc_id: &str,
    version: u64,
) -> Result<Option<bool>, StoreError> {
    sqlx::query_scalar(
        "DELETE FROM backfill_queue WHERE migration_id = $1 AND doc_id = $2
           AND EXISTS (SELECT 1 FROM documents WHERE id = $2 AND version = $3)
         RETURNING failed",
    )
    .bind(migration_id)
    .bind(doc_id)
    .bind(sql_int(version)?)
    .fetch_optional(&mut **tx)
    .await
    .map_err(store_error)
}

async fn insert_skip(
    tx: &mut Tx,
    batch: Batch<'_>,
    doc_id: &str,
    reason: &str,
) -> Result<(), StoreError> {
    sqlx::query("INSERT INTO skips (migration_id, doc_id, reason, at) VALUES ($1, $2, $3, $4)")
        .bind(batch.migration_id)
        .bind(doc_id)
        .bind(reason)
        .bind(batch.now)
        .execute(&mut **tx)
        .await
        .map_err(store_error)?;
    Ok(())
}

/// Queues a document; whether it was not queued yet.
pub(super) async fn enqueue(
    tx: &mut Tx,
    migration_id: &str,
    doc_id: &str,
) -> Result<bool, StoreError> {
    let done = sqlx::query(
        "INSERT INTO backfill_queue (migration_id, doc_id) VALUES ($1, $2)
         ON CONFLICT DO NOTHING",
    )
    .bind(migration_id)
    .bind(doc_id)
    .execute(&mut **tx)
    .await
    .map_err(store_error)?;
    Ok(done.rows_affected() > 0)
}

/// Takes a document off the queue: whether its latest attempt had failed, or `None` if it was
/// not queued.
pub(super) async fn dequeue(
    tx: &mut Tx,
    migration_id: &str,
    doc_id: &str,
) -> Result<Option<bool>, StoreError> {
    sqlx::query_scalar(
        "DELETE FROM backfill_queue WHERE migration_id = $1 AND doc_id = $2 RETURNING failed",
    )
    .bind(migration_id)
    .bind(doc_id)
    .fetch_optional(&mut **tx)
    .await
    .map_err(store_error)
}

/// Persists a non-zero delta on the backfilling migration and reports it for the receipt.
pub(super) async fn record_delta(
    tx: &mut Tx,
    migration: Option<&QueueView>,
    delta: CountsDelta,
) -> Result<Option<(String, CountsDelta)>, StoreError> {
    let Some(migration) = migration.filter(|_| !delta.is_zero()) else {
        return Ok(None);
    };
    apply_delta(tx, &migration.id, delta).await?;
    Ok(Some((migration.id.clone(), delta)))
}

/// Moves the migration's counts by `delta`: relative, so concurrent transactions add up, and
/// last in its transaction, so the row stays locked only until the commit.
async fn apply_delta(
    tx: &mut Tx,
    migration_id: &str,
    delta: CountsDelta,
) -> Result<(), StoreError> {
    let done = sqlx::query(
        "UPDATE migrations SET total = total + $2, processed = processed + $3,
                skipped = skipped + $4, failed = failed + $5, truncated = truncated + $6
         WHERE id = $1",
    )
    .bind(migration_id)
    .bind(delta.total)
    .bind(sql_int(delta.processed)?)
    .bind(delta.skipped)
    .bind(delta.failed)
    .bind(sql_int(delta.truncated)?)
    .execute(&mut **tx)
    .await
    .map_err(store_error)?;
    if done.rows_affected() == 0 {
        return Err(StoreError::Conflict(format!("no migration {migration_id}")));
    }
    Ok(())
}
