//! The backfill queue in SQLite: claims under leases, committing a claim's batch with its
//! compare-and-set, releasing failed attempts, skips, and the queue operations the write path
//! shares; every count change comes from `domain::queue` and moves in the same transaction as
//! the rows it counts.
//!
//! A claim marks its queued documents with its token and lease end (unix milliseconds) and
//! holds one of the migration's `max_concurrent` rows in `backfill_leases`; only that token,
//! before that end, may take the documents off the queue. One process uses the database, so
//! the leases only matter within it, and all of them are released when the store opens.

use std::time::Duration;

use async_trait::async_trait;
use chrono::{DateTime, Utc};

use super::codec::{
    decode_claimed, decode_migration, decode_replica, decode_skip, encode_time, sql_int,
    store_error, stored_u64,
};
use super::documents::upsert_vector;
use super::history::insert_event;
use super::{SqliteStore, Tx};
use crate::domain::{HistoryEvent, Migration, QueueChange, free_slot};
use crate::store::batch::{ClaimedQueue, commit_items};
use crate::store::{
    AfterCommit, BatchItem, BatchReceipt, Claim, ClaimOutcome, ClaimedDocument, CountsDelta,
    LeaseRequest, ReplicaProgress, Skip, StoreError,
};

/// [`Store::claim`](crate::store::Store::claim) on SQLite.
pub(super) async fn claim(
    store: &SqliteStore,
    migration_id: &str,
    limit: u32,
    lease: &LeaseRequest,
) -> Result<ClaimOutcome, StoreError> {
    store
        .write(async {
            let mut tx = store.begin_write().await?;
            let now = Utc::now();
            let outcome = claim_in(&mut tx, migration_id, limit, lease, now).await?;
            tx.commit().await.map_err(store_error)?;
            Ok(outcome)
        })
        .await
}

async fn claim_in(
    tx: &mut Tx,
    migration_id: &str,
    limit: u32,
    lease: &LeaseRequest,
    now: DateTime<Utc>,
) -> Result<ClaimOutcome, StoreError> {
    let Some(migration) = migration_in(tx, migration_id).await? else {
        return Ok(ClaimOutcome::Closed);
    };
    if !migration.takes_claims() {
        return Ok(ClaimOutcome::Closed);
    }
    let held = held_slots(tx, migration_id, now).await?;
    let Some(slot) = free_slot(&held, migration.config.max_concurrent) else {
        return Ok(ClaimOutcome::Busy);
    };
    let documents = claimable(tx, migration_id, limit, now).await?;
    let (Some(first), Some(last)) = (documents.first(), documents.last()) else {
        return Ok(if queue_is_empty(tx, migration_id).await? {
            ClaimOutcome::Drained
        } else {
            ClaimOutcome::Busy
        });
    };
    let token = uuid::Uuid::new_v4().simple().to_string();
    let expires_at = lease_end(now, lease);
    sqlx::query(
        "UPDATE backfill_queue SET claimed_by = ?1, lease_expires_at = ?2
         WHERE migration_id = ?3 AND doc_id BETWEEN ?4 AND ?5
           AND (lease_expires_at IS NULL OR lease_expires_at <= ?6)",
    )
    .bind(&token)
    .bind(expires_at)
    .bind(migration_id)
    .bind(&first.id)
    .bind(&last.id)
    .bind(unix_ms(now))
    .execute(&mut **tx)
    .await
    .map_err(store_error)?;
    hold_slot(tx, migration_id, slot, &token, lease, expires_at).await?;
    Ok(ClaimOutcome::Claimed(Claim {
        migration_id: migration_id.to_owned(),
        target_model: migration.target_model,
        token,
        documents,
    }))
}

async fn migration_in(tx: &mut Tx, migration_id: &str) -> Result<Option<Migration>, StoreError> {
    let row = sqlx::query("SELECT * FROM migrations WHERE id = ?1")
        .bind(migration_id)
        .fetch_optional(&mut **tx)
        .await
        .map_err(store_error)?;
    row.as_ref().map(decode_migration).transpose()
}

/// The slots of the migration whose leases have not expired at `now`.
async fn held_slots(
    tx: &mut Tx,
    migration_id: &str,
    now: DateTime<Utc>,
) -> Result<Vec<u32>, StoreError> {
    let slots: Vec<i64> = sqlx::query_scalar(
        "SELECT slot FROM backfill_leases WHERE migration_id = ?1 AND expires_at > ?2",
    )
    .bind(migration_id)
    .bind(unix_ms(now))
    .fetch_all(&mut **tx)
    .await
    .map_err(store_error)?;
    slots
        .into_iter()
        .map(|slot| u32::try_from(slot).map_err(|_| StoreError::Corrupt(format!("slot {slot}"))))
        .collect()
}

/// The first `limit` queued documents in id order that no unexpired lease holds.
async fn claimable(
    tx: &mut Tx,
    migration_id: &str,
    limit: u32,
    now: DateTime<Utc>,
) -> Result<Vec<ClaimedDocument>, StoreError> {
    let rows = sqlx::query(
        "SELECT d.id, d.text, d.version FROM backfill_queue q JOIN documents d ON d.id = q.doc_id
         WHERE q.migration_id = ?1 AND (q.lease_expires_at IS NULL OR q.lease_expires_at <= ?2)
         ORDER BY q.doc_id LIMIT ?3",
    )
    .bind(migration_id)
    .bind(unix_ms(now))
    .bind(i64::from(limit))
    .fetch_all(&mut **tx)
    .await
    .map_err(store_error)?;
    rows.iter().map(decode_claimed).collect()
}

async fn queue_is_empty(tx: &mut Tx, migration_id: &str) -> Result<bool, StoreError> {
    let queued: Option<i64> =
        sqlx::query_scalar("SELECT 1 FROM backfill_queue WHERE migration_id = ?1 LIMIT 1")
            .bind(migration_id)
            .fetch_optional(&mut **tx)
            .await
            .map_err(store_error)?;
    Ok(queued.is_none())
}

async fn hold_slot(
    tx: &mut Tx,
    migration_id: &str,
    slot: u32,
    token: &str,
    lease: &LeaseRequest,
    expires_at: i64,
) -> Result<(), StoreError> {
    sqlx::query(
        "INSERT OR REPLACE INTO backfill_leases (migration_id, slot, token, replica_id, expires_at)
         VALUES (?1, ?2, ?3, ?4, ?5)",
    )
    .bind(migration_id)
    .bind(i64::from(slot))
    .bind(token)
    .bind(&lease.replica)
    .bind(expires_at)
    .execute(&mut **tx)
    .await
    .map_err(store_error)?;
    sqlx::query(
        "INSERT OR IGNORE INTO backfill_replicas (migration_id, replica_id) VALUES (?1, ?2)",
    )
    .bind(migration_id)
    .bind(&lease.replica)
    .execute(&mut **tx)
    .await
    .map_err(store_error)?;
    Ok(())
}

/// [`Store::renew_claim`](crate::store::Store::renew_claim) on SQLite.
pub(super) async fn renew_claim(
    store: &SqliteStore,
    claim: &Claim,
    lease: &LeaseRequest,
) -> Result<bool, StoreError> {
    store
        .write(async {
            let mut tx = store.begin_write().await?;
            let now = Utc::now();
            let expires_at = lease_end(now, lease);
            let renewed = sqlx::query(
                "UPDATE backfill_leases SET expires_at = ?1 WHERE token = ?2 AND expires_at > ?3",
            )
            .bind(expires_at)
            .bind(&claim.token)
            .bind(unix_ms(now))
            .execute(&mut *tx)
            .await
            .map_err(store_error)?
            .rows_affected()
                > 0;
            if renewed {
                sqlx::query(
                    "UPDATE backfill_queue SET lease_expires_at = ?1 WHERE claimed_by = ?2",
                )
                .bind(expires_at)
                .bind(&claim.token)
                .execute(&mut *tx)
                .await
                .map_err(store_error)?;
            }
            tx.commit().await.map_err(store_error)?;
            Ok(renewed)
        })
        .await
}

/// [`Store::commit_claimed`](crate::store::Store::commit_claimed) on SQLite.
pub(super) async fn commit_claimed(
    store: &SqliteStore,
    claim: &Claim,
    items: &[BatchItem],
    tokens: u64,
    after: AfterCommit,
) -> Result<BatchReceipt, StoreError> {
    store
        .write(async {
            let mut tx = store.begin_write().await?;
            let mut batch = BatchTx {
                tx: &mut tx,
                claim,
                now: Utc::now(),
            };
            let receipt = commit_items(&mut batch, items, tokens).await?;
            if !receipt.delta.is_zero() {
                apply_delta(&mut tx, &claim.migration_id, receipt.delta).await?;
            }
            count_for_replica(&mut tx, claim, receipt.written.len()).await?;
            if after == AfterCommit::Release {
                release(&mut tx, claim).await?;
            }
            tx.commit().await.map_err(store_error)?;
            Ok(receipt)
        })
        .await
}

/// Adds what a claim's batch wrote to its replica's count.
async fn count_for_replica(tx: &mut Tx, claim: &Claim, written: usize) -> Result<(), StoreError> {
    if written == 0 {
        return Ok(());
    }
    sqlx::query(
        "UPDATE backfill_replicas SET processed = processed + ?1
         WHERE migration_id = ?2
           AND replica_id = (SELECT replica_id FROM backfill_leases WHERE token = ?3)",
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
    let (first, last) = id_range(claim);
    sqlx::query(
        "UPDATE backfill_queue SET claimed_by = NULL, lease_expires_at = NULL
         WHERE migration_id = ?2 AND doc_id BETWEEN ?3 AND ?4 AND claimed_by = ?1",
    )
    .bind(&claim.token)
    .bind(&claim.migration_id)
    .bind(first)
    .bind(last)
    .execute(&mut **tx)
    .await
    .map_err(store_error)?;
    sqlx::query("DELETE FROM backfill_leases WHERE token = ?1")
        .bind(&claim.token)
        .execute(&mut **tx)
        .await
        .map_err(store_error)?;
    Ok(())
}

/// [`Store::release_failed`](crate::store::Store::release_failed) on SQLite: the documents
/// keep a lease of no one's until `retry_after` has passed.
pub(super) async fn release_failed(
    store: &SqliteStore,
    claim: &Claim,
    retry_after: Duration,
) -> Result<CountsDelta, StoreError> {
    store
        .write(async {
            let mut tx = store.begin_write().await?;
            let now = unix_ms(Utc::now());
            let (first, last) = id_range(claim);
            let newly = sqlx::query(
                "UPDATE backfill_queue SET failed = 1
                 WHERE migration_id = ?3 AND doc_id BETWEEN ?4 AND ?5
                   AND claimed_by = ?1 AND lease_expires_at > ?2 AND failed = 0",
            )
            .bind(&claim.token)
            .bind(now)
            .bind(&claim.migration_id)
            .bind(first)
            .bind(last)
            .execute(&mut *tx)
            .await
            .map_err(store_error)?
            .rows_affected();
            let delta = (0..newly).fold(CountsDelta::default(), |delta, _| {
                delta.then(QueueChange::Failed { newly: true }.delta())
            });
            if !delta.is_zero() {
                apply_delta(&mut tx, &claim.migration_id, delta).await?;
            }
            sqlx::query(
                "UPDATE backfill_queue SET claimed_by = NULL, lease_expires_at = ?1
                 WHERE migration_id = ?4 AND doc_id BETWEEN ?5 AND ?6
                   AND claimed_by = ?2 AND lease_expires_at > ?3",
            )
            .bind(now.saturating_add(millis(retry_after)))
            .bind(&claim.token)
            .bind(now)
            .bind(&claim.migration_id)
            .bind(first)
            .bind(last)
            .execute(&mut *tx)
            .await
            .map_err(store_error)?;
            release(&mut tx, claim).await?;
            tx.commit().await.map_err(store_error)?;
            Ok(delta)
        })
        .await
}

/// [`Store::backfill_replicas`](crate::store::Store::backfill_replicas) on SQLite.
pub(super) async fn backfill_replicas(
    store: &SqliteStore,
    migration_id: &str,
) -> Result<Vec<ReplicaProgress>, StoreError> {
    let rows = sqlx::query(
        "SELECT r.replica_id, r.processed,
                (SELECT count(*) FROM backfill_leases l
                 WHERE l.migration_id = r.migration_id AND l.replica_id = r.replica_id
                   AND l.expires_at > ?2) AS in_flight
         FROM backfill_replicas r WHERE r.migration_id = ?1 ORDER BY r.replica_id",
    )
    .bind(migration_id)
    .bind(unix_ms(Utc::now()))
    .fetch_all(&store.reader)
    .await
    .map_err(store_error)?;
    rows.iter().map(decode_replica).collect()
}

/// Releases every lease: run at open, when nothing from before is in flight in this, the
/// only process using the database.
pub(super) async fn release_all_leases(store: &SqliteStore) -> Result<(), StoreError> {
    let mut tx = store.begin_write().await?;
    sqlx::query(
        "UPDATE backfill_queue SET claimed_by = NULL, lease_expires_at = NULL
         WHERE claimed_by IS NOT NULL",
    )
    .execute(&mut *tx)
    .await
    .map_err(store_error)?;
    sqlx::query("DELETE FROM backfill_leases")
        .execute(&mut *tx)
        .await
        .map_err(store_error)?;
    tx.commit().await.map_err(store_error)
}

/// The lowest and highest id a claim took: its documents are found again by this range of
/// the queue's primary key (and their `claimed_by`), with no index on `claimed_by`.
fn id_range(claim: &Claim) -> (&str, &str) {
    let first = claim.documents.first().map_or("", |d| d.id.as_str());
    let last = claim.documents.last().map_or("", |d| d.id.as_str());
    (first, last)
}

/// `now` as unix milliseconds, the unit of the lease columns.
fn unix_ms(now: DateTime<Utc>) -> i64 {
    now.timestamp_millis()
}

/// When a lease taken at `now` ends, in unix milliseconds.
fn lease_end(now: DateTime<Utc>, lease: &LeaseRequest) -> i64 {
    unix_ms(now).saturating_add(millis(lease.duration))
}

/// `duration` in milliseconds, the unit of the lease columns.
fn millis(duration: Duration) -> i64 {
    i64::try_from(duration.as_millis()).unwrap_or(i64::MAX)
}

/// [`Store::skips`](crate::store::Store::skips) on SQLite.
pub(super) async fn skips(
    store: &SqliteStore,
    migration_id: &str,
) -> Result<Vec<Skip>, StoreError> {
    let rows =
        sqlx::query("SELECT doc_id, reason, at FROM skips WHERE migration_id = ?1 ORDER BY seq")
            .bind(migration_id)
            .fetch_all(&store.reader)
            .await
            .map_err(store_error)?;
    rows.iter().map(decode_skip).collect()
}

/// [`Store::requeue_skips`](crate::store::Store::requeue_skips) on SQLite.
pub(super) async fn requeue_skips(
    store: &SqliteStore,
    migration_id: &str,
    noted: &HistoryEvent,
) -> Result<CountsDelta, StoreError> {
    store
        .write(async {
            let mut tx = store.begin_write().await?;
            insert_event(&mut tx, noted).await?;
            let current = current_skips(&mut tx, migration_id).await?;
            // A skipped document holding a current target vector is not queued again: the
            // backfill would embed what a dual write already did.
            let requeued = sqlx::query(
                "INSERT OR IGNORE INTO backfill_queue (migration_id, doc_id)
             SELECT DISTINCT s.migration_id, s.doc_id FROM skips s
             JOIN documents d ON d.id = s.doc_id
             JOIN migrations m ON m.id = s.migration_id
             WHERE s.migration_id = ?1 AND NOT EXISTS (
                 SELECT 1 FROM vectors v
                 WHERE v.model = m.target_model AND v.doc_id = d.id AND v.version = d.version)",
            )
            .bind(migration_id)
            .execute(&mut *tx)
            .await
            .map_err(store_error)?
            .rows_affected();
            let listed = sqlx::query("DELETE FROM skips WHERE migration_id = ?1")
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
        })
        .await
}

/// How many skipped documents of the migration hold a current target vector (a dual write
/// gave it since the skip) and are not queued.
async fn current_skips(tx: &mut Tx, migration_id: &str) -> Result<u64, StoreError> {
    let current: i64 = sqlx::query_scalar(
        "SELECT count(DISTINCT s.doc_id) FROM skips s
         JOIN documents d ON d.id = s.doc_id
         JOIN migrations m ON m.id = s.migration_id
         JOIN vectors v ON v.model = m.target_model AND v.doc_id = d.id AND v.version = d.version
         WHERE s.migration_id = ?1 AND NOT EXISTS (
             SELECT 1 FROM backfill_queue q WHERE q.migration_id = ?1 AND q.doc_id = d.id)",
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
        dequeue_claimed(self.tx, self.claim, unix_ms(self.now), doc_id, version).await
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
    now_ms: i64,
    doc_id: &str,
    version: Option<u64>,
) -> Result<Option<bool>, StoreError> {
    let version = version.map(sql_int).transpose()?;
    let failed: Option<i64> = sqlx::query_scalar(
        "DELETE FROM backfill_queue
         WHERE migration_id = ?1 AND doc_id = ?2 AND claimed_by = ?3 AND lease_expires_at > ?4
           AND (?5 IS NULL OR EXISTS (SELECT 1 FROM documents WHERE id = ?2 AND version = ?5))
         RETURNING failed",
    )
    .bind(&claim.migration_id)
    .bind(doc_id)
    .bind(&claim.token)
    .bind(now_ms)
    .bind(version)
    .fetch_optional(&mut **tx)
    .await
    .map_err(store_error)?;
    Ok(failed.map(|failed| failed != 0))
}

async fn insert_skip(
    tx: &mut Tx,
    migration_id: &str,
    doc_id: &str,
    reason: &str,
    at: DateTime<Utc>,
) -> Result<(), StoreError> {
    sqlx::query("INSERT INTO skips (migration_id, doc_id, reason, at) VALUES (?1, ?2, ?3, ?4)")
        .bind(migration_id)
        .bind(doc_id)
        .bind(reason)
        .bind(encode_time(at))
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
    let done =
        sqlx::query("INSERT OR IGNORE INTO backfill_queue (migration_id, doc_id) VALUES (?1, ?2)")
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
    let failed: Option<i64> = sqlx::query_scalar(
        "DELETE FROM backfill_queue WHERE migration_id = ?1 AND doc_id = ?2 RETURNING failed",
    )
    .bind(migration_id)
    .bind(doc_id)
    .fetch_optional(&mut **tx)
    .await
    .map_err(store_error)?;
    Ok(failed.map(|failed| failed != 0))
}

pub(super) async fn apply_delta(
    tx: &mut Tx,
    migration_id: &str,
    delta: CountsDelta,
) -> Result<(), StoreError> {
    let done = sqlx::query(
        "UPDATE migrations SET total = total + ?2, processed = processed + ?3,
                skipped = skipped + ?4, failed = failed + ?5, truncated = truncated + ?6,
                tokens_embedded = tokens_embedded + ?7
         WHERE id = ?1",
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
