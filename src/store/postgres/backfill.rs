//! The backfill queue in PostgreSQL: claims shared by every replica under leases, committing a
//! claim's batch with its compare-and-set, releasing failed attempts, skips, and the queue
//! operations the write path shares; every count change comes from `domain::queue` and moves
//! in the same transaction as the rows it counts, as that transaction's last statement.
//!
//! A claim marks its queued documents with its token and lease end and holds one of the
//! migration's `max_concurrent` rows in `backfill_leases`; only that token, before that end,
//! may take the documents off the queue. Lease times are the database clock's (`now()`), so
//! replicas whose clocks differ agree on when a lease ends. A replica that dies mid-batch
//! stops renewing; once its lease ends, another replica's claim takes the documents, and the
//! dead one's commit, should it come after all, writes nothing.

use std::time::Duration;

use async_trait::async_trait;
use chrono::{DateTime, Utc};

use super::codec::{
    decode_claimed, decode_migration, decode_replica, decode_skip, sql_int, store_error, stored_u64,
};
use super::documents::upsert_vector;
use super::history::insert_event;
use super::{PostgresStore, Tx};
use crate::domain::{HistoryEvent, QueueChange, free_slot};
use crate::store::batch::{ClaimedQueue, commit_items};
use crate::store::{
    AfterCommit, BatchItem, BatchReceipt, Claim, ClaimOutcome, CountsDelta, LeaseRequest,
    ReplicaProgress, Skip, StoreError,
};

/// The advisory lock class of claims (with the migration id's hash as the second key): claims
/// of one migration run one at a time across replicas, so two never take the same slot.
const CLAIM_LOCK: i32 = 0x7265_6d62;

/// [`Store::claim`](crate::store::Store::claim) on PostgreSQL: the queued documents are locked
/// `FOR UPDATE SKIP LOCKED`, so a claim never waits on a write that holds one of them, and all
/// times are the database's.
pub(super) async fn claim(
    store: &PostgresStore,
    migration_id: &str,
    limit: u32,
    lease: &LeaseRequest,
) -> Result<ClaimOutcome, StoreError> {
    let mut tx = store.begin_write().await?;
    sqlx::query("SELECT pg_advisory_xact_lock($1, hashtext($2))")
        .bind(CLAIM_LOCK)
        .bind(migration_id)
        .execute(&mut *tx)
        .await
        .map_err(store_error)?;
    let outcome = claim_in(&mut tx, migration_id, limit, lease).await?;
    tx.commit().await.map_err(store_error)?;
    Ok(outcome)
}

async fn claim_in(
    tx: &mut Tx,
    migration_id: &str,
    limit: u32,
    lease: &LeaseRequest,
) -> Result<ClaimOutcome, StoreError> {
    let row = sqlx::query("SELECT * FROM migrations WHERE id = $1")
        .bind(migration_id)
        .fetch_optional(&mut **tx)
        .await
        .map_err(store_error)?;
    let Some(migration) = row.as_ref().map(decode_migration).transpose()? else {
        return Ok(ClaimOutcome::Closed);
    };
    if !migration.takes_claims() {
        return Ok(ClaimOutcome::Closed);
    }
    let held = held_slots(tx, migration_id).await?;
    let Some(slot) = free_slot(&held, migration.config.max_concurrent) else {
        return Ok(ClaimOutcome::Busy);
    };
    let token = uuid::Uuid::new_v4().simple().to_string();
    let rows = sqlx::query(
        "WITH claimable AS (
             SELECT doc_id FROM backfill_queue
             WHERE migration_id = $1 AND (lease_expires_at IS NULL OR lease_expires_at <= now())
             ORDER BY doc_id LIMIT $2 FOR UPDATE SKIP LOCKED
         ), claimed AS (
             UPDATE backfill_queue q
             SET claimed_by = $3, lease_expires_at = now() + $4 * interval '1 millisecond'
             FROM claimable c WHERE q.migration_id = $1 AND q.doc_id = c.doc_id
             RETURNING q.doc_id
         )
         SELECT d.id, d.text, d.version FROM claimed c JOIN documents d ON d.id = c.doc_id
         ORDER BY d.id",
    )
    .bind(migration_id)
    .bind(i64::from(limit))
    .bind(&token)
    .bind(millis(lease.duration))
    .fetch_all(&mut **tx)
    .await
    .map_err(store_error)?;
    let documents = rows
        .iter()
        .map(decode_claimed)
        .collect::<Result<Vec<_>, _>>()?;
    if documents.is_empty() {
        return Ok(if queue_is_empty(tx, migration_id).await? {
            ClaimOutcome::Drained
        } else {
            ClaimOutcome::Busy
        });
    }
    hold_slot(tx, migration_id, slot, &token, lease).await?;
    Ok(ClaimOutcome::Claimed(Claim {
        migration_id: migration_id.to_owned(),
        target_model: migration.target_model,
        token,
        documents,
    }))
}

/// The slots of the migration whose leases have not expired.
async fn held_slots(tx: &mut Tx, migration_id: &str) -> Result<Vec<u32>, StoreError> {
    let slots: Vec<i32> = sqlx::query_scalar(
        "SELECT slot FROM backfill_leases WHERE migration_id = $1 AND expires_at > now()",
    )
    .bind(migration_id)
    .fetch_all(&mut **tx)
    .await
    .map_err(store_error)?;
    slots
        .into_iter()
        .map(|slot| u32::try_from(slot).map_err(|_| StoreError::Corrupt(format!("slot {slot}"))))
        .collect()
}

async fn queue_is_empty(tx: &mut Tx, migration_id: &str) -> Result<bool, StoreError> {
    let queued: bool =
        sqlx::query_scalar("SELECT EXISTS (SELECT 1 FROM backfill_queue WHERE migration_id = $1)")
            .bind(migration_id)
            .fetch_one(&mut **tx)
            .await
            .map_err(store_error)?;
    Ok(!queued)
}

async fn hold_slot(
    tx: &mut Tx,
    migration_id: &str,
    slot: u32,
    token: &str,
    lease: &LeaseRequest,
) -> Result<(), StoreError> {
    sqlx::query(
        "INSERT INTO backfill_leases (migration_id, slot, token, replica_id, expires_at)
         VALUES ($1, $2, $3, $4, now() + $5 * interval '1 millisecond')
         ON CONFLICT (migration_id, slot) DO UPDATE
         SET token = excluded.token, replica_id = excluded.replica_id,
             expires_at = excluded.expires_at",
    )
    .bind(migration_id)
    .bind(i32::try_from(slot).map_err(|_| StoreError::Corrupt(format!("slot {slot}")))?)
    .bind(token)
    .bind(&lease.replica)
    .bind(millis(lease.duration))
    .execute(&mut **tx)
    .await
    .map_err(store_error)?;
    sqlx::query(
        "INSERT INTO backfill_replicas (migration_id, replica_id) VALUES ($1, $2)
         ON CONFLICT DO NOTHING",
    )
    .bind(migration_id)
    .bind(&lease.replica)
    .execute(&mut **tx)
    .await
    .map_err(store_error)?;
    Ok(())
}

/// [`Store::renew_claim`](crate::store::Store::renew_claim) on PostgreSQL.
pub(super) async fn renew_claim(
    store: &PostgresStore,
    claim: &Claim,
    lease: &LeaseRequest,
) -> Result<bool, StoreError> {
    let mut tx = store.begin_write().await?;
    let renewed = sqlx::query(
        "UPDATE backfill_leases SET expires_at = now() + $1 * interval '1 millisecond'
         WHERE token = $2 AND expires_at > now()",
    )
    .bind(millis(lease.duration))
    .bind(&claim.token)
    .execute(&mut *tx)
    .await
    .map_err(store_error)?
    .rows_affected()
        > 0;
    if renewed {
        sqlx::query(
            "UPDATE backfill_queue SET lease_expires_at = now() + $1 * interval '1 millisecond'
             WHERE claimed_by = $2",
        )
        .bind(millis(lease.duration))
        .bind(&claim.token)
        .execute(&mut *tx)
        .await
        .map_err(store_error)?;
    }
    tx.commit().await.map_err(store_error)?;
    Ok(renewed)
}

/// [`Store::commit_claimed`](crate::store::Store::commit_claimed) on PostgreSQL.
pub(super) async fn commit_claimed(
    store: &PostgresStore,
    claim: &Claim,
    items: &[BatchItem],
    tokens: u64,
    after: AfterCommit,
) -> Result<BatchReceipt, StoreError> {
    for item in items {
        if let BatchItem::Embedded { vector, .. } = item {
            super::codec::check_vector(&claim.target_model, vector)?;
        }
    }
    let mut tx = store.begin_write().await?;
    lock_batch_documents(&mut tx, items).await?;
    let mut batch = BatchTx {
        tx: &mut tx,
        claim,
        now: Utc::now(),
    };
    let receipt = commit_items(&mut batch, items, tokens).await?;
    count_for_replica(&mut tx, claim, receipt.written.len()).await?;
    if after == AfterCommit::Release {
        release(&mut tx, claim).await?;
    }
    if !receipt.delta.is_zero() {
        apply_delta(&mut tx, &claim.migration_id, receipt.delta).await?;
    }
    tx.commit().await.map_err(store_error)?;
    Ok(receipt)
}

/// Adds what a claim's batch wrote to its replica's count.
async fn count_for_replica(tx: &mut Tx, claim: &Claim, written: usize) -> Result<(), StoreError> {
    if written == 0 {
        return Ok(());
    }
    sqlx::query(
        "UPDATE backfill_replicas SET processed = processed + $1
         WHERE migration_id = $2
           AND replica_id = (SELECT replica_id FROM backfill_leases WHERE token = $3)",
    )
    .bind(sql_int(written)?)
    .bind(&claim.migration_id)
    .bind(&claim.token)
    .execute(&mut **tx)
    .await
    .map_err(store_error)?;
    Ok(())
}

/// Ends a claim: its slot frees, and its documents still queued become claimable again.
async fn release(tx: &mut Tx, claim: &Claim) -> Result<(), StoreError> {
    sqlx::query(
        "UPDATE backfill_queue SET claimed_by = NULL, lease_expires_at = NULL
         WHERE claimed_by = $1",
    )
    .bind(&claim.token)
    .execute(&mut **tx)
    .await
    .map_err(store_error)?;
    sqlx::query("DELETE FROM backfill_leases WHERE token = $1")
        .bind(&claim.token)
        .execute(&mut **tx)
        .await
        .map_err(store_error)?;
    Ok(())
}

/// [`Store::release_failed`](crate::store::Store::release_failed) on PostgreSQL: the
/// documents keep a lease of no one's until `retry_after` has passed.
pub(super) async fn release_failed(
    store: &PostgresStore,
    claim: &Claim,
    retry_after: Duration,
) -> Result<CountsDelta, StoreError> {
    let mut tx = store.begin_write().await?;
    let newly = sqlx::query(
        "UPDATE backfill_queue SET failed = true
         WHERE claimed_by = $1 AND lease_expires_at > now() AND NOT failed",
    )
    .bind(&claim.token)
    .execute(&mut *tx)
    .await
    .map_err(store_error)?
    .rows_affected();
    sqlx::query(
        "UPDATE backfill_queue
         SET claimed_by = NULL, lease_expires_at = now() + $1 * interval '1 millisecond'
         WHERE claimed_by = $2 AND lease_expires_at > now()",
    )
    .bind(millis(retry_after))
    .bind(&claim.token)
    .execute(&mut *tx)
    .await
    .map_err(store_error)?;
    release(&mut tx, claim).await?;
    let delta = (0..newly).fold(CountsDelta::default(), |delta, _| {
        delta.then(QueueChange::Failed { newly: true }.delta())
    });
    if !delta.is_zero() {
        apply_delta(&mut tx, &claim.migration_id, delta).await?;
    }
    tx.commit().await.map_err(store_error)?;
    Ok(delta)
}

/// [`Store::backfill_replicas`](crate::store::Store::backfill_replicas) on PostgreSQL.
pub(super) async fn backfill_replicas(
    store: &PostgresStore,
    migration_id: &str,
) -> Result<Vec<ReplicaProgress>, StoreError> {
    let rows = sqlx::query(
        "SELECT r.replica_id, r.processed,
                (SELECT count(*) FROM backfill_leases l
                 WHERE l.migration_id = r.migration_id AND l.replica_id = r.replica_id
                   AND l.expires_at > now()) AS in_flight
         FROM backfill_replicas r WHERE r.migration_id = $1 ORDER BY r.replica_id",
    )
    .bind(migration_id)
    .fetch_all(&store.pool)
    .await
    .map_err(store_error)?;
    rows.iter().map(decode_replica).collect()
}

/// `duration` in whole milliseconds, as the lease arithmetic in SQL takes it.
fn millis(duration: Duration) -> i64 {
    i64::try_from(duration.as_millis()).unwrap_or(i64::MAX)
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
    noted: &HistoryEvent,
) -> Result<CountsDelta, StoreError> {
    let mut tx = store.begin_write().await?;
    insert_event(&mut tx, noted).await?;
    let current = current_skips(&mut tx, migration_id).await?;
    // A skipped document holding a current target vector is not queued again: the backfill
    // would embed what a dual write already did.
    let requeued = sqlx::query(
        "INSERT INTO backfill_queue (migration_id, doc_id)
         SELECT DISTINCT s.migration_id, s.doc_id FROM skips s
         JOIN documents d ON d.id = s.doc_id
         JOIN migrations m ON m.id = s.migration_id
         WHERE s.migration_id = $1 AND NOT EXISTS (
             SELECT 1 FROM vectors v
             WHERE v.model = m.target_model AND v.doc_id = d.id AND v.version = d.version)
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
    let delta = QueueChange::SkipsRequeued {
        listed,
        requeued,
        current,
    }
    .delta();
    if !delta.is_zero() {
        apply_delta(&mut tx, migration_id, delta).await?;
    }
    tx.commit().await.map_err(store_error)?;
    Ok(delta)
}

/// How many skipped documents of the migration hold a current target vector (a dual write
/// gave it since the skip) and are not queued.
async fn current_skips(tx: &mut Tx, migration_id: &str) -> Result<u64, StoreError> {
    let current: i64 = sqlx::query_scalar(
        "SELECT count(DISTINCT s.doc_id) FROM skips s
         JOIN documents d ON d.id = s.doc_id
         JOIN migrations m ON m.id = s.migration_id
         JOIN vectors v ON v.model = m.target_model AND v.doc_id = d.id AND v.version = d.version
         WHERE s.migration_id = $1 AND NOT EXISTS (
             SELECT 1 FROM backfill_queue q WHERE q.migration_id = $1 AND q.doc_id = d.id)",
    )
    .bind(migration_id)
    .fetch_one(&mut **tx)
    .await
    .map_err(store_error)?;
    stored_u64(current, "current skips")
}

/// One `commit_claimed` transaction, as the shared batch commit drives it
/// (`store::batch`).
struct BatchTx<'t> {
    tx: &'t mut Tx,
    claim: &'t Claim,
    now: DateTime<Utc>,
}

#[async_trait]
impl ClaimedQueue for BatchTx<'_> {
    async fn dequeue_claimed(
        &mut self,
        doc_id: &str,
        version: Option<u64>,
    ) -> Result<Option<bool>, StoreError> {
        dequeue_claimed(self.tx, self.claim, doc_id, version).await
    }

    async fn write_target_vector(
        &mut self,
        doc_id: &str,
        version: u64,
        vector: &[f32],
    ) -> Result<(), StoreError> {
        upsert_vector(self.tx, &self.claim.target_model, doc_id, version, vector).await
    }

    async fn list_skip(&mut self, doc_id: &str, reason: &str) -> Result<(), StoreError> {
        insert_skip(self.tx, &self.claim.migration_id, doc_id, reason, self.now).await
    }
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

/// Takes a document of the batch's claim off the queue: whether its latest attempt had failed,
/// or `None` if the claim no longer holds it (its lease expired or it left the queue).
///
/// With a `version`, this is the compare-and-set of a backfilled vector (invariant 3): only
/// if the document is still at that version. If the version moved on, the newer write either
/// carried the target vector (and already dequeued and counted the document) or left it
/// queued for a later batch to embed the newer text.
async fn dequeue_claimed(
    tx: &mut Tx,
    claim: &Claim,
    doc_id: &str,
    version: Option<u64>,
) -> Result<Option<bool>, StoreError> {
    let version = version.map(sql_int).transpose()?;
    sqlx::query_scalar(
        "DELETE FROM backfill_queue
         WHERE migration_id = $1 AND doc_id = $2 AND claimed_by = $3 AND lease_expires_at > now()
           AND ($4::bigint IS NULL
                OR EXISTS (SELECT 1 FROM documents WHERE id = $2 AND version = $4))
         RETURNING failed",
    )
    .bind(&claim.migration_id)
    .bind(doc_id)
    .bind(&claim.token)
    .bind(version)
    .fetch_optional(&mut **tx)
    .await
    .map_err(store_error)
}

async fn insert_skip(
    tx: &mut Tx,
    migration_id: &str,
    doc_id: &str,
    reason: &str,
    at: DateTime<Utc>,
) -> Result<(), StoreError> {
    sqlx::query("INSERT INTO skips (migration_id, doc_id, reason, at) VALUES ($1, $2, $3, $4)")
        .bind(migration_id)
        .bind(doc_id)
        .bind(reason)
        .bind(at)
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

/// Moves the migration's counts by `delta`: relative, so concurrent transactions add up, and
/// last in its transaction, so the row stays locked only until the commit.
pub(super) async fn apply_delta(
    tx: &mut Tx,
    migration_id: &str,
    delta: CountsDelta,
) -> Result<(), StoreError> {
    let done = sqlx::query(
        "UPDATE migrations SET total = total + $2, processed = processed + $3,
                skipped = skipped + $4, failed = failed + $5, truncated = truncated + $6,
                tokens_embedded = tokens_embedded + $7
         WHERE id = $1",
    )
    .bind(migration_id)
    .bind(delta.total)
    .bind(sql_int(delta.processed)?)
    .bind(delta.skipped)
    .bind(delta.failed)
    .bind(sql_int(delta.truncated)?)
    .bind(sql_int(delta.tokens_embedded)?)
    .execute(&mut **tx)
    .await
    .map_err(store_error)?;
    if done.rows_affected() == 0 {
        return Err(StoreError::Conflict(format!("no migration {migration_id}")));
    }
    Ok(())
}
