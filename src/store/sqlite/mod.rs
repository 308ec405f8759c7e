//! The embedded SQLite backend: one file, `reembed.db`, in the data directory.
//!
//! Durability comes from WAL with `synchronous = FULL`: a commit survives power loss, not just
//! a process crash, so every acknowledged write is on disk (invariant 5). Consistency comes
//! from a single writer connection: every method that changes data runs one transaction on it,
//! so each sees the migration state and counts the previous one committed, and the counts move
//! in the same transaction as the rows they count (invariant 4). Reads use separate read-only
//! connections, which WAL lets run beside the writer without blocking it.
//!
//! The schema and its encodings are described in `migrations/0001_initial.sql`.

mod bulk;
mod lookup;

use std::collections::HashMap;
use std::fmt::Display;
use std::future::Future;
use std::path::{Path, PathBuf};
use std::sync::{Mutex, PoisonError};
use std::time::Duration;

use async_trait::async_trait;
use chrono::{DateTime, SecondsFormat, Utc};
use futures_util::stream::BoxStream;
use serde_json::Value;
use sqlx::sqlite::{
    SqliteConnectOptions, SqliteConnection, SqliteJournalMode, SqlitePool, SqlitePoolOptions,
    SqliteRow, SqliteSynchronous,
};
use sqlx::{Connection, Row, Sqlite, Transaction};

use super::{
    BatchItem, BatchReceipt, ClaimedDocument, CountsDelta, DocumentWrite, OverInputLimit, Skip,
    Store, StoreError, StoredDocument, StoredMetadata, StoredVector, VectorInfo, WriteOutcome,
    WriteReceipt,
};
use crate::domain::queue::{self, QueueChange, QueueStep, QueueView};
use crate::domain::{Counts, Migration, MigrationState};
use crate::run_to_end::run_to_end;

/// The database file inside the data directory.
const DB_FILE: &str = "reembed.db";
/// Read-only connections: enough for concurrent API reads and batch claims on a small machine.
const READERS: u32 = 4;
/// How long a statement waits for a lock before failing, e.g. while a checkpoint runs.
const BUSY_TIMEOUT: Duration = Duration::from_secs(5);

type Tx = Transaction<'static, Sqlite>;

/// The SQLite implementation of [`Store`], and the default backend of a single-machine
/// deployment.
pub struct SqliteStore {
    /// Exactly one connection, through which every write transaction goes. SQLite admits one
    /// writer at a time anyway; queueing writers here rather than in SQLite means each
    /// transaction reads the migration state its predecessor committed (the write path's
    /// queue-or-dequeue rule depends on it) and no two transactions can deadlock upgrading a
    /// read lock to a write lock (`SQLITE_BUSY` that no busy timeout resolves).
    writer: SqlitePool,
    /// A few read-only connections for queries that change nothing. In WAL mode they read a
    /// committed snapshot without waiting for the writer, so reads never queue behind a
    /// backfill batch; being read-only, they cannot bypass the writer by mistake.
    reader: SqlitePool,
    /// Read-only rusqlite connections for the documents a query returns (see `lookup`).
    lookups: lookup::Lookups,
    /// The directory holding the database, whose file system's free space readiness reads.
    data_dir: PathBuf,
    /// Why the latest write failed for want of disk space or a working disk; `None` once a
    /// write succeeds. Readiness follows it (`ping`).
    write_failure: Mutex<Option<WriteFailure>>,
}

/// A write that failed for want of space or a working disk, and the space free just after.
#[derive(Debug, Clone)]
struct WriteFailure {
    reason: String,
    free_bytes: Option<u64>,
}

/// Space that must come free after a failed write before readiness expects writes to work
/// again without one having succeeded.
const FREED_TO_RECOVER: u64 = 1024 * 1024;

impl SqliteStore {
    /// Opens (creating if needed) `reembed.db` in `data_dir` and brings its schema up to date.
    pub async fn open(data_dir: &Path) -> Result<SqliteStore, StoreError> {
        tokio::fs::create_dir_all(data_dir).await.map_err(|e| {
            StoreError::Unavailable(format!("cannot create {}: {e}", data_dir.display()))
        })?;
        let base = SqliteConnectOptions::new()
            .filename(data_dir.join(DB_FILE))
            .foreign_keys(true)
            .busy_timeout(BUSY_TIMEOUT);
        let writer_options = base
            .clone()
            .create_if_missing(true)
            .journal_mode(SqliteJournalMode::Wal)
            .synchronous(SqliteSynchronous::Full);
        let writer = writer_pool(writer_options).await?;
        sqlx::migrate!("./migrations")
            .run(&writer)
            .await
            .map_err(|e| StoreError::Unavailable(format!("schema migration failed: {e}")))?;
        // Opened after the migrations so that read-only connections find the schema in place.
        let reader = pool(READERS, base.read_only(true)).await?;
        Ok(SqliteStore {
            writer,
            reader,
            lookups: lookup::Lookups::new(data_dir.join(DB_FILE)),
            data_dir: data_dir.to_owned(),
            write_failure: Mutex::new(None),
        })
    }

    /// Runs one write and remembers whether it failed for want of space or a working disk, so
    /// that readiness can tell; any write that succeeds clears it.
    async fn write<T>(
        &self,
        work: impl Future<Output = Result<T, StoreError>>,
    ) -> Result<T, StoreError> {
        let result = work.await;
        let failure = match &result {
            Ok(_) => None,
            Err(StoreError::Full(reason)) => Some(WriteFailure {
                reason: reason.clone(),
                free_bytes: free_bytes(&self.data_dir),
            }),
            Err(_) => return result,
        };
        *self
            .write_failure
            .lock()
            .unwrap_or_else(PoisonError::into_inner) = failure;
        result
    }

    /// Why writes cannot work now: the latest write failed for want of space or a working
    /// disk, and no write has succeeded since, nor has `FREED_TO_RECOVER` come free. (A small
    /// write may still fit where the one that failed did not, so none is tried here.)
    fn unwritable(&self) -> Option<String> {
        let failure = self
            .write_failure
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .clone()?;
        let freed = match (failure.free_bytes, free_bytes(&self.data_dir)) {
            (Some(then), Some(now)) => now.saturating_sub(then),
            _ => 0,
        };
        (freed < FREED_TO_RECOVER).then_some(failure.reason)
    }

    /// `IMMEDIATE` takes the write lock up front, so a transaction that reads before it writes
    /// cannot fail on the lock upgrade if another process (a backup tool, the sqlite3 shell)
    /// holds the database; it waits for the busy timeout instead.
    ///
    /// sqlx checks a custom `BEGIN` with one more round trip to the connection's thread after
    /// the `BEGIN` ran. A caller dropped in between (a request whose client hung up) would
    /// return the connection to the pool inside a transaction that nothing rolls back, and
    /// every later `BEGIN` on it would fail. So the `BEGIN` runs to its end whoever waits for
    /// it (`run_to_end`); a transaction it hands to nobody is dropped, which rolls it back.
    async fn begin_write(&self) -> Result<Tx, StoreError> {
        let writer = self.writer.clone();
        run_to_end(async move {
            writer
                .begin_with("BEGIN IMMEDIATE")
                .await
                .map_err(store_error)
        })
        .await
    }

    /// A read transaction, for reads of several statements that must see one snapshot.
    async fn begin_read(&self) -> Result<Tx, StoreError> {
        self.reader.begin().await.map_err(store_error)
    }
}

/// The writer's one connection. A connection released inside a transaction is closed instead
/// of reused, and the next write opens a fresh one: on a full disk SQLite may roll a failed
/// `COMMIT` back by itself, sqlx's own `ROLLBACK` then fails, and sqlx would count the
/// transaction as open forever, refusing every later `BEGIN` on that connection.
async fn writer_pool(options: SqliteConnectOptions) -> Result<SqlitePool, StoreError> {
    SqlitePoolOptions::new()
        .max_connections(1)
        .after_release(|connection, _| {
            Box::pin(async move {
                if !connection.is_in_transaction() {
                    return Ok(true);
                }
                // A rollback queued by a dropped transaction runs before the ping answers.
                connection.ping().await?;
                Ok(!connection.is_in_transaction())
            })
        })
        .connect_with(options)
        .await
        .map_err(store_error)
}

async fn pool(size: u32, options: SqliteConnectOptions) -> Result<SqlitePool, StoreError> {
    SqlitePoolOptions::new()
        .max_connections(size)
        .connect_with(options)
        .await
        .map_err(store_error)
}

/// Closes every connection of `pool`. One `Pool::close` is not always enough: a connection
/// still being handed back when it starts can be parked idle after its last sweep and stay
/// open. The pool admits no new connections once closed, so each round only shrinks it.
async fn close_pool(pool: &SqlitePool) {
    pool.close().await;
    while pool.size() > 0 {
        pool.close().await;
    }
}

#[async_trait]
impl Store for SqliteStore {
    /// Reads answer, and writes can work: not while the latest write failed for want of
    /// space and none has come free since.
    async fn ping(&self) -> Result<(), StoreError> {
        sqlx::query("SELECT 1")
            .execute(&self.reader)
            .await
            .map_err(store_error)?;
        match self.unwritable() {
            None => Ok(()),
            Some(reason) => Err(StoreError::Full(reason)),
        }
    }

    async fn active_model(&self) -> Result<Option<String>, StoreError> {
        sqlx::query_scalar("SELECT value FROM meta WHERE key = 'active_model'")
            .fetch_optional(&self.reader)
            .await
            .map_err(store_error)
    }

    async fn set_active_model(&self, model: &str) -> Result<(), StoreError> {
        self.write(async {
            sqlx::query(
                "INSERT INTO meta (key, value) VALUES ('active_model', ?1)
                 ON CONFLICT (key) DO UPDATE SET value = excluded.value",
            )
            .bind(model)
            .execute(&self.writer)
            .await
            .map_err(store_error)?;
            Ok(())
        })
        .await
    }

    async fn write_documents_with(
        &self,
        writes: &[DocumentWrite],
        over_input_limit: OverInputLimit<'_>,
    ) -> Result<WriteReceipt, StoreError> {
        self.write(async {
            let mut tx = self.begin_write().await?;
            let latest = latest_migration(&mut tx).await?;
            let steps = plan_writes(latest.as_ref(), writes)?;
            let backfilling = latest.as_ref().filter(|m| m.follows_writes());
            let mut delta = CountsDelta::default();
            let mut outcomes = Vec::with_capacity(writes.len());
            for (write, step) in writes.iter().zip(steps) {
                let version = upsert_document(&mut tx, write).await?;
                if let Some(migration) = backfilling {
                    let change = follow_write(&mut tx, migration, write, step, over_input_limit);
                    if let Some(change) = change.await? {
                        delta = delta.then(change.delta());
                    }
                }
                outcomes.push(WriteOutcome {
                    id: write.id.clone(),
                    version,
                });
            }
            let migration = record_delta(&mut tx, backfilling, delta).await?;
            tx.commit().await.map_err(store_error)?;
            Ok(WriteReceipt {
                outcomes,
                migration,
            })
        })
        .await
    }

    async fn delete_document(&self, id: &str) -> Result<Option<WriteReceipt>, StoreError> {
        self.write(async {
            let mut tx = self.begin_write().await?;
            let Some(version) = document_version(&mut tx, id).await? else {
                return Ok(None);
            };
            let latest = latest_migration(&mut tx).await?;
            let backfilling = latest.as_ref().filter(|m| m.follows_writes());
            let mut delta = CountsDelta::default();
            if let Some(migration) = backfilling
                && let Some(had_failed) = dequeue(&mut tx, &migration.id, id).await?
            {
                delta = QueueChange::Deleted { had_failed }.delta();
            }
            remove_document(&mut tx, id, version).await?;
            let migration = record_delta(&mut tx, backfilling, delta).await?;
            tx.commit().await.map_err(store_error)?;
            Ok(Some(WriteReceipt {
                outcomes: Vec::new(),
                migration,
            }))
        })
        .await
    }

    async fn get_document(&self, id: &str) -> Result<Option<StoredDocument>, StoreError> {
        let mut tx = self.begin_read().await?;
        let row = sqlx::query("SELECT id, text, metadata, version FROM documents WHERE id = ?1")
            .bind(id)
            .fetch_optional(&mut *tx)
            .await
            .map_err(store_error)?;
        let Some(row) = row else { return Ok(None) };
        let mut document = decode_document(&row)?;
        document.embeddings = document_embeddings(&mut tx, id).await?;
        Ok(Some(document))
    }

    async fn list_documents(
        &self,
        after: Option<&str>,
        limit: u32,
    ) -> Result<Vec<StoredDocument>, StoreError> {
        let mut tx = self.begin_read().await?;
        let rows = sqlx::query(
            "SELECT id, text, metadata, version FROM documents
             WHERE ?1 IS NULL OR id > ?1 ORDER BY id LIMIT ?2",
        )
        .bind(after)
        .bind(i64::from(limit))
        .fetch_all(&mut *tx)
        .await
        .map_err(store_error)?;
        let mut embeddings = page_embeddings(&mut tx, after, limit).await?;
        rows.iter()
            .map(|row| {
                let mut document = decode_document(row)?;
                document.embeddings = embeddings.remove(&document.id).unwrap_or_default();
                Ok(document)
            })
            .collect()
    }

    async fn hit_documents(&self, ids: &[String]) -> Result<Vec<StoredDocument>, StoreError> {
        self.lookups.documents(ids).await
    }

    fn metadata(&self) -> BoxStream<'_, Result<StoredMetadata, StoreError>> {
        bulk::rows(
            self.data_dir.join(DB_FILE),
            "SELECT id, version, metadata FROM documents WHERE metadata NOT IN ('{}', 'null')",
            Vec::new(),
            decode_bulk_metadata,
        )
    }

    fn vectors<'a>(&'a self, model: &'a str) -> BoxStream<'a, Result<StoredVector, StoreError>> {
        bulk::rows(
            self.data_dir.join(DB_FILE),
            "SELECT doc_id, version, dimensions, data FROM vectors WHERE model = ?1 ORDER BY doc_id",
            vec![model.to_owned()],
            decode_bulk_vector,
        )
    }

    async fn backfill_estimate(&self, target_model: &str) -> Result<(u64, u64), StoreError> {
        let row = sqlx::query(
            "SELECT COUNT(*) AS documents, COALESCE(SUM(LENGTH(d.text)), 0) AS chars
             FROM documents d
             LEFT JOIN vectors v ON v.model = ?1 AND v.doc_id = d.id
             WHERE v.doc_id IS NULL OR v.version < d.version",
        )
        .bind(target_model)
        .fetch_one(&self.reader)
        .await
        .map_err(store_error)?;
        let documents = stored_u64(column(&row, "documents")?, "document count")?;
        let chars = stored_u64(column(&row, "chars")?, "text length")?;
        Ok((documents, chars))
    }

    async fn insert_migration(&self, migration: &Migration) -> Result<(), StoreError> {
        self.write(async { insert_migration_row(&self.writer, migration).await })
            .await
    }

    async fn start_migration(&self, migration: &Migration) -> Result<Counts, StoreError> {
        self.write(async {
            let mut tx = self.begin_write().await?;
            persist_lifecycle(&mut tx, migration, MigrationState::Planned).await?;
            let queued = enqueue_stale(&mut tx, migration).await?;
            let counts = Counts {
                total: queued,
                ..Counts::default()
            };
            sqlx::query(
                "UPDATE migrations SET total = ?2, processed = 0, skipped = 0, failed = 0, truncated = 0
                 WHERE id = ?1",
            )
            .bind(&migration.id)
            .bind(sql_int(queued)?)
            .execute(&mut *tx)
            .await
            .map_err(store_error)?;
            tx.commit().await.map_err(store_error)?;
            Ok(counts)
        })
        .await
    }

    async fn update_migration(
        &self,
        migration: &Migration,
        expected: MigrationState,
    ) -> Result<(), StoreError> {
        self.write(async {
            let mut tx = self.begin_write().await?;
            persist_lifecycle(&mut tx, migration, expected).await?;
            if matches!(
                migration.state,
                MigrationState::Cancelled | MigrationState::RolledBack
            ) {
                sqlx::query("DELETE FROM backfill_queue WHERE migration_id = ?1")
                    .bind(&migration.id)
                    .execute(&mut *tx)
                    .await
                    .map_err(store_error)?;
                // Nothing waits any more, so nothing is waiting after a failure.
                sqlx::query("UPDATE migrations SET failed = 0 WHERE id = ?1")
                    .bind(&migration.id)
                    .execute(&mut *tx)
                    .await
                    .map_err(store_error)?;
            }
            tx.commit().await.map_err(store_error)
        })
        .await
    }

    async fn complete_migration(&self, migration: &Migration) -> Result<bool, StoreError> {
        self.write(async {
            let mut tx = self.begin_write().await?;
            let queued: bool = sqlx::query_scalar(
                "SELECT EXISTS (SELECT 1 FROM backfill_queue WHERE migration_id = ?1)",
            )
            .bind(&migration.id)
            .fetch_one(&mut *tx)
            .await
            .map_err(store_error)?;
            if queued {
                return Ok(false);
            }
            persist_lifecycle(&mut tx, migration, MigrationState::InProgress).await?;
            tx.commit().await.map_err(store_error)?;
            Ok(true)
        })
        .await
    }

    async fn migrations(&self) -> Result<Vec<Migration>, StoreError> {
        let rows = sqlx::query("SELECT * FROM migrations ORDER BY seq DESC")
            .fetch_all(&self.reader)
            .await
            .map_err(store_error)?;
        rows.iter().map(decode_migration).collect()
    }

    async fn migration(&self, id: &str) -> Result<Option<Migration>, StoreError> {
        let row = sqlx::query("SELECT * FROM migrations WHERE id = ?1")
            .bind(id)
            .fetch_optional(&self.reader)
            .await
            .map_err(store_error)?;
        row.as_ref().map(decode_migration).transpose()
    }

    async fn queued_documents(
        &self,
        migration_id: &str,
        after: &str,
        limit: u32,
    ) -> Result<Vec<ClaimedDocument>, StoreError> {
        let rows = sqlx::query(
            "SELECT d.id, d.text, d.version FROM backfill_queue q JOIN documents d ON d.id = q.doc_id
             WHERE q.migration_id = ?1 AND q.doc_id > ?2 ORDER BY q.doc_id LIMIT ?3",
        )
        .bind(migration_id)
        .bind(after)
        .bind(i64::from(limit))
        .fetch_all(&self.reader)
        .await
        .map_err(store_error)?;
        rows.iter().map(decode_claimed).collect()
    }

    async fn commit_batch_until(
        &self,
        migration_id: &str,
        target_model: &str,
        items: &[BatchItem],
        stop: &(dyn Fn(usize) -> bool + Send + Sync),
    ) -> Result<(BatchReceipt, usize), StoreError> {
        self.write(async {
            let mut tx = self.begin_write().await?;
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
        })
        .await
    }

    async fn record_failures(
        &self,
        migration_id: &str,
        doc_ids: &[String],
    ) -> Result<CountsDelta, StoreError> {
        self.write(async {
            let mut tx = self.begin_write().await?;
            let mut delta = CountsDelta::default();
            for doc_id in doc_ids {
                let flagged = sqlx::query(
                    "UPDATE backfill_queue SET failed = 1
                     WHERE migration_id = ?1 AND doc_id = ?2 AND failed = 0",
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
        })
        .await
    }

    async fn skips(&self, migration_id: &str) -> Result<Vec<Skip>, StoreError> {
        let rows = sqlx::query(
            "SELECT doc_id, reason, at FROM skips WHERE migration_id = ?1 ORDER BY seq",
        )
        .bind(migration_id)
        .fetch_all(&self.reader)
        .await
        .map_err(store_error)?;
        rows.iter().map(decode_skip).collect()
    }

    async fn requeue_skips(&self, migration_id: &str) -> Result<CountsDelta, StoreError> {
        self.write(async {
            let mut tx = self.begin_write().await?;
            let requeued = sqlx::query(
                "INSERT OR IGNORE INTO backfill_queue (migration_id, doc_id)
                 SELECT DISTINCT s.migration_id, s.doc_id FROM skips s
                 JOIN documents d ON d.id = s.doc_id
                 WHERE s.migration_id = ?1",
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
            let delta = QueueChange::SkipsRequeued { listed, requeued }.delta();
            if !delta.is_zero() {
                apply_delta(&mut tx, migration_id, delta).await?;
            }
            tx.commit().await.map_err(store_error)?;
            Ok(delta)
        })
        .await
    }

    async fn close(&self) {
        // Readers first: the last connection to close checkpoints the WAL into the database
        // file and removes it, which only a connection that may write can do.
        self.lookups.close();
        close_pool(&self.reader).await;
        close_pool(&self.writer).await;
    }
}

// ---- Write path -------------------------------------------------------------------------

/// The latest migration as the write path sees it, read inside the write's transaction.
async fn latest_migration(tx: &mut Tx) -> Result<Option<QueueView>, StoreError> {
    let row = sqlx::query(
        "SELECT id, target_model, state, rollback_window_ends_at, total, processed, skipped
         FROM migrations ORDER BY seq DESC LIMIT 1",
    )
    .fetch_optional(&mut **tx)
    .await
    .map_err(store_error)?;
    let Some(row) = row else { return Ok(None) };
    let state = decode_state(&column::<String>(&row, "state")?)?;
    let ends_at = decode_optional_time(&row, "rollback_window_ends_at")?;
    let count = |name| stored_u64(column::<i64>(&row, name)?, name);
    let counts = Counts {
        total: count("total")?,
        processed: count("processed")?,
        skipped: count("skipped")?,
        ..Counts::default()
    };
    Ok(Some(QueueView::new(
        column(&row, "id")?,
        column(&row, "target_model")?,
        state,
        counts,
        ends_at,
        Utc::now(),
    )))
}

/// Each write's step on the queue (`domain::queue::plan`), all planned before any is written
/// so that a refused write changes nothing.
fn plan_writes(
    latest: Option<&QueueView>,
    writes: &[DocumentWrite],
) -> Result<Vec<QueueStep>, StoreError> {
    writes
        .iter()
        .map(|write| {
            let carries = latest.is_some_and(|m| has_vector_of(write, &m.target_model));
            queue::plan(latest, &write.id, carries)
                .map_err(|refused| StoreError::Conflict(refused.to_string()))
        })
        .collect()
}

fn has_vector_of(write: &DocumentWrite, model: &str) -> bool {
    write.vectors.iter().any(|(m, _)| m == model)
}

/// Upserts the document one version up and stores its vectors at that version; returns it.
async fn upsert_document(tx: &mut Tx, write: &DocumentWrite) -> Result<u64, StoreError> {
    let version = next_version(tx, &write.id).await?;
    sqlx::query(
        "INSERT INTO documents (id, text, metadata, version) VALUES (?1, ?2, ?3, ?4)
         ON CONFLICT (id) DO UPDATE
         SET text = excluded.text, metadata = excluded.metadata, version = excluded.version",
    )
    .bind(&write.id)
    .bind(&write.text)
    .bind(encode_json(&write.metadata)?)
    .bind(sql_int(version)?)
    .execute(&mut **tx)
    .await
    .map_err(store_error)?;
    for (model, vector) in &write.vectors {
        upsert_vector(tx, model, &write.id, version, vector).await?;
    }
    Ok(version)
}

/// One more than the stored version, or than the version the document had when it was
/// deleted (see `document_tombstones` in the schema), or 1.
async fn next_version(tx: &mut Tx, id: &str) -> Result<u64, StoreError> {
    let current: i64 = sqlx::query_scalar(
        "SELECT COALESCE(
             (SELECT version FROM documents WHERE id = ?1),
             (SELECT version FROM document_tombstones WHERE id = ?1),
             0)",
    )
    .bind(id)
    .fetch_one(&mut **tx)
    .await
    .map_err(store_error)?;
    Ok(stored_u64(current, "document version")? + 1)
}

async fn upsert_vector(
    tx: &mut Tx,
    model: &str,
    doc_id: &str,
    version: u64,
    vector: &[f32],
) -> Result<(), StoreError> {
    sqlx::query(
        "INSERT INTO vectors (model, doc_id, version, dimensions, data) VALUES (?1, ?2, ?3, ?4, ?5)
         ON CONFLICT (model, doc_id) DO UPDATE
         SET version = excluded.version, dimensions = excluded.dimensions, data = excluded.data",
    )
    .bind(model)
    .bind(doc_id)
    .bind(sql_int(version)?)
    .bind(sql_int(vector.len())?)
    .bind(encode_vector(vector))
    .execute(&mut **tx)
    .await
    .map_err(store_error)?;
    Ok(())
}

/// Carries out a write's `step` on the backfilling migration's queue and reports the change:
/// a satisfied entry is taken off (truncated when `over_input_limit` says the target embedded
/// the text truncated); a document lacking a current target vector is queued.
async fn follow_write(
    tx: &mut Tx,
    migration: &QueueView,
    write: &DocumentWrite,
    step: QueueStep,
    over_input_limit: OverInputLimit<'_>,
) -> Result<Option<QueueChange>, StoreError> {
    Ok(match step {
        QueueStep::Leave => None,
        QueueStep::Enqueue => Some(QueueChange::Queued {
            newly: enqueue(tx, &migration.id, &write.id).await? > 0,
        }),
        QueueStep::Dequeue => dequeue(tx, &migration.id, &write.id)
            .await?
            .map(|had_failed| QueueChange::Embedded {
                had_failed,
                truncated: over_input_limit(&migration.target_model, &write.text),
            }),
    })
}

/// Queues a document; returns 1 if it was not queued yet, else 0.
async fn enqueue(tx: &mut Tx, migration_id: &str, doc_id: &str) -> Result<u64, StoreError> {
    let done =
        sqlx::query("INSERT OR IGNORE INTO backfill_queue (migration_id, doc_id) VALUES (?1, ?2)")
            .bind(migration_id)
            .bind(doc_id)
            .execute(&mut **tx)
            .await
            .map_err(store_error)?;
    Ok(done.rows_affected())
}

/// Takes a document off the queue: whether its latest attempt had failed, or `None` if it was
/// not queued.
async fn dequeue(
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

/// Persists a non-zero delta on the backfilling migration and reports it for the receipt.
async fn record_delta(
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

async fn apply_delta(
    tx: &mut Tx,
    migration_id: &str,
    delta: CountsDelta,
) -> Result<(), StoreError> {
    let done = sqlx::query(
        "UPDATE migrations SET total = total + ?2, processed = processed + ?3,
                skipped = skipped + ?4, failed = failed + ?5, truncated = truncated + ?6
         WHERE id = ?1",
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

async fn document_version(tx: &mut Tx, id: &str) -> Result<Option<u64>, StoreError> {
    let version: Option<i64> = sqlx::query_scalar("SELECT version FROM documents WHERE id = ?1")
        .bind(id)
        .fetch_optional(&mut **tx)
        .await
        .map_err(store_error)?;
    version
        .map(|v| stored_u64(v, "document version"))
        .transpose()
}

/// Deletes the document (its vectors and any queue entry follow by cascade) and remembers its
/// last version.
async fn remove_document(tx: &mut Tx, id: &str, version: u64) -> Result<(), StoreError> {
    sqlx::query(
        "INSERT INTO document_tombstones (id, version) VALUES (?1, ?2)
         ON CONFLICT (id) DO UPDATE SET version = excluded.version",
    )
    .bind(id)
    .bind(sql_int(version)?)
    .execute(&mut **tx)
    .await
    .map_err(store_error)?;
    sqlx::query("DELETE FROM documents WHERE id = ?1")
        .bind(id)
        .execute(&mut **tx)
        .await
        .map_err(store_error)?;
    Ok(())
}

// ---- Migrations -------------------------------------------------------------------------

async fn insert_migration_row(pool: &SqlitePool, m: &Migration) -> Result<(), StoreError> {
    let counts = &m.counts;
    sqlx::query(
        "INSERT INTO migrations (id, source_model, target_model, config, state, created_at,
             started_at, completed_at, rollback_window_ends_at, error, pause_reason,
             total, processed, skipped, failed, truncated)
         VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10, ?11, ?12, ?13, ?14, ?15, ?16)",
    )
    .bind(&m.id)
    .bind(&m.source_model)
    .bind(&m.target_model)
    .bind(encode_config(m)?)
    .bind(m.state.as_str())
    .bind(encode_time(m.created_at))
    .bind(m.started_at.map(encode_time))
    .bind(m.completed_at.map(encode_time))
    .bind(m.rollback_window_ends_at.map(encode_time))
    .bind(&m.error)
    .bind(&m.pause_reason)
    .bind(sql_int(counts.total)?)
    .bind(sql_int(counts.processed)?)
    .bind(sql_int(counts.skipped)?)
    .bind(sql_int(counts.failed)?)
    .bind(sql_int(counts.truncated)?)
    .execute(pool)
    .await
    .map_err(|e| insert_error(e, &m.id))?;
    Ok(())
}

/// A duplicate id is a client-visible conflict, not an outage.
fn insert_error(error: sqlx::Error, id: &str) -> StoreError {
    match error {
        sqlx::Error::Database(db) if db.is_unique_violation() => {
            StoreError::Conflict(format!("migration {id} already exists"))
        }
        other => store_error(other),
    }
}

/// Writes every lifecycle field of `m` (never its counts, which only the write path and
/// batches move) if the stored state is still `expected`; otherwise `Conflict`.
async fn persist_lifecycle(
    tx: &mut Tx,
    m: &Migration,
    expected: MigrationState,
) -> Result<(), StoreError> {
    check_state(tx, &m.id, expected).await?;
    sqlx::query(
        "UPDATE migrations SET config = ?2, state = ?3, started_at = ?4, completed_at = ?5,
             rollback_window_ends_at = ?6, error = ?7, pause_reason = ?8
         WHERE id = ?1",
    )
    .bind(&m.id)
    .bind(encode_config(m)?)
    .bind(m.state.as_str())
    .bind(m.started_at.map(encode_time))
    .bind(m.completed_at.map(encode_time))
    .bind(m.rollback_window_ends_at.map(encode_time))
    .bind(&m.error)
    .bind(&m.pause_reason)
    .execute(&mut **tx)
    .await
    .map_err(store_error)?;
    Ok(())
}

async fn check_state(tx: &mut Tx, id: &str, expected: MigrationState) -> Result<(), StoreError> {
    let stored: Option<String> = sqlx::query_scalar("SELECT state FROM migrations WHERE id = ?1")
        .bind(id)
        .fetch_optional(&mut **tx)
        .await
        .map_err(store_error)?;
    let Some(stored) = stored else {
        return Err(StoreError::Conflict(format!("no migration {id}")));
    };
    let stored = decode_state(&stored)?;
    if stored != expected {
        return Err(StoreError::Conflict(format!(
            "migration {id} is {stored}, expected {expected}"
        )));
    }
    Ok(())
}

/// Queues every document whose target vector is missing or older than the document; returns
/// how many.
async fn enqueue_stale(tx: &mut Tx, m: &Migration) -> Result<u64, StoreError> {
    let done = sqlx::query(
        "INSERT INTO backfill_queue (migration_id, doc_id)
         SELECT ?1, d.id FROM documents d
         LEFT JOIN vectors v ON v.model = ?2 AND v.doc_id = d.id
         WHERE v.doc_id IS NULL OR v.version < d.version",
    )
    .bind(&m.id)
    .bind(&m.target_model)
    .execute(&mut **tx)
    .await
    .map_err(store_error)?;
    Ok(done.rows_affected())
}

// ---- Backfill batches -------------------------------------------------------------------

/// The fixed context of one `commit_batch` call.
#[derive(Clone, Copy)]
struct Batch<'a> {
    migration_id: &'a str,
    target_model: &'a str,
    now: DateTime<Utc>,
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
                receipt.delta = receipt.delta.then(QueueChange::Skipped { had_failed }.delta());
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
    let failed: Option<i64> = sqlx::query_scalar(
        "DELETE FROM backfill_queue WHERE migration_id = ?1 AND doc_id = ?2
           AND EXISTS (SELECT 1 FROM documents WHERE id = ?2 AND version = ?3)
         RETURNING failed",
    )
    .bind(migration_id)
    .bind(doc_id)
    .bind(sql_int(version)?)
    .fetch_optional(&mut **tx)
    .await
    .map_err(store_error)?;
    Ok(failed.map(|failed| failed != 0))
}

async fn insert_skip(
    tx: &mut Tx,
    batch: Batch<'_>,
    doc_id: &str,
    reason: &str,
) -> Result<(), StoreError> {
    sqlx::query("INSERT INTO skips (migration_id, doc_id, reason, at) VALUES (?1, ?2, ?3, ?4)")
        .bind(batch.migration_id)
        .bind(doc_id)
        .bind(reason)
        .bind(encode_time(batch.now))
        .execute(&mut **tx)
        .await
        .map_err(store_error)?;
    Ok(())
}

// ---- Reads ------------------------------------------------------------------------------

/// One document's embeddings, sorted by model.
async fn document_embeddings(
    conn: &mut SqliteConnection,
    id: &str,
) -> Result<Vec<VectorInfo>, StoreError> {
    let rows = sqlx::query(
        "SELECT model, version, dimensions FROM vectors WHERE doc_id = ?1 ORDER BY model",
    )
    .bind(id)
    .fetch_all(conn)
    .await
    .map_err(store_error)?;
    rows.iter().map(decode_vector_info).collect()
}

/// The embeddings of a `list_documents` page (same `after` and `limit`) in one query, grouped
/// by document and sorted by model.
async fn page_embeddings(
    conn: &mut SqliteConnection,
    after: Option<&str>,
    limit: u32,
) -> Result<HashMap<String, Vec<VectorInfo>>, StoreError> {
    let rows = sqlx::query(
        "SELECT doc_id, model, version, dimensions FROM vectors
         WHERE doc_id IN (SELECT id FROM documents WHERE ?1 IS NULL OR id > ?1 ORDER BY id LIMIT ?2)
         ORDER BY doc_id, model",
    )
    .bind(after)
    .bind(i64::from(limit))
    .fetch_all(conn)
    .await
    .map_err(store_error)?;
    let mut grouped: HashMap<String, Vec<VectorInfo>> = HashMap::new();
    for row in &rows {
        let info = decode_vector_info(row)?;
        grouped
            .entry(column(row, "doc_id")?)
            .or_default()
            .push(info);
    }
    Ok(grouped)
}

// ---- Decoding and encoding --------------------------------------------------------------

/// Decoding failures mean the stored data is not what this code wrote; anything else means the
/// database could not do its job.
/// SQLite's primary result codes for a full disk and for a failing one.
const SQLITE_FULL: i32 = 13;
const SQLITE_IOERR: i32 = 10;

fn store_error(error: sqlx::Error) -> StoreError {
    if is_disk_failure(&error) {
        return StoreError::Full(error.to_string());
    }
    match error {
        sqlx::Error::ColumnDecode { .. }
        | sqlx::Error::Decode(_)
        | sqlx::Error::ColumnNotFound(_)
        | sqlx::Error::ColumnIndexOutOfBounds { .. }
        | sqlx::Error::TypeNotFound { .. } => StoreError::Corrupt(error.to_string()),
        other => StoreError::Unavailable(other.to_string()),
    }
}

/// The bytes an unprivileged writer may still use on the file system holding `dir`; `None`
/// where the system cannot tell.
fn free_bytes(dir: &Path) -> Option<u64> {
    use std::os::unix::ffi::OsStrExt;
    let path = std::ffi::CString::new(dir.as_os_str().as_bytes()).ok()?;
    let mut stat = std::mem::MaybeUninit::<libc::statvfs>::uninit();
    // SAFETY: `path` is NUL-terminated and outlives the call; statvfs only writes `stat`.
    let failed = unsafe { libc::statvfs(path.as_ptr(), stat.as_mut_ptr()) } != 0;
    if failed {
        return None;
    }
    // SAFETY: statvfs succeeded, so it filled `stat`.
    let stat = unsafe { stat.assume_init() };
    Some(stat.f_bavail.saturating_mul(stat.f_frsize))
}

/// Whether SQLite failed for want of disk space or a working disk (an extended result code
/// keeps its primary code in the low byte).
fn is_disk_failure(error: &sqlx::Error) -> bool {
    let sqlx::Error::Database(database) = error else {
        return false;
    };
    let primary = database
        .code()
        .and_then(|code| code.parse::<i32>().ok())
        .map(|code| code & 0xff);
    matches!(primary, Some(SQLITE_FULL | SQLITE_IOERR))
}

fn column<'r, T>(row: &'r SqliteRow, name: &str) -> Result<T, StoreError>
where
    T: sqlx::Decode<'r, Sqlite> + sqlx::Type<Sqlite>,
{
    row.try_get(name).map_err(store_error)
}

/// SQLite integers are signed 64-bit; counts and versions are far below the limit, so a value
/// beyond it can only come from corrupted in-memory state.
fn sql_int<T: TryInto<i64> + Copy + Display>(value: T) -> Result<i64, StoreError> {
    value
        .try_into()
        .map_err(|_| StoreError::Corrupt(format!("{value} exceeds SQLite's integer range")))
}

fn stored_u64(value: i64, what: &str) -> Result<u64, StoreError> {
    u64::try_from(value).map_err(|_| StoreError::Corrupt(format!("negative {what}: {value}")))
}

fn stored_usize(value: i64) -> Result<usize, StoreError> {
    usize::try_from(value).map_err(|_| StoreError::Corrupt(format!("bad dimensions: {value}")))
}

fn encode_time(time: DateTime<Utc>) -> String {
    time.to_rfc3339_opts(SecondsFormat::Nanos, true)
}

fn decode_time(text: &str) -> Result<DateTime<Utc>, StoreError> {
    DateTime::parse_from_rfc3339(text)
        .map(|t| t.with_timezone(&Utc))
        .map_err(|e| StoreError::Corrupt(format!("bad timestamp {text:?}: {e}")))
}

fn decode_optional_time(row: &SqliteRow, name: &str) -> Result<Option<DateTime<Utc>>, StoreError> {
    column::<Option<String>>(row, name)?
        .as_deref()
        .map(decode_time)
        .transpose()
}

fn encode_json(value: &Value) -> Result<String, StoreError> {
    serde_json::to_string(value).map_err(|e| StoreError::Corrupt(format!("metadata: {e}")))
}

fn encode_config(m: &Migration) -> Result<String, StoreError> {
    serde_json::to_string(&m.config)
        .map_err(|e| StoreError::Corrupt(format!("migration config: {e}")))
}

fn decode_state(name: &str) -> Result<MigrationState, StoreError> {
    MigrationState::parse(name)
        .ok_or_else(|| StoreError::Corrupt(format!("unknown migration state {name:?}")))
}

fn encode_vector(vector: &[f32]) -> Vec<u8> {
    vector.iter().flat_map(|x| x.to_le_bytes()).collect()
}

fn decode_vector(data: &[u8], dimensions: usize) -> Result<Vec<f32>, StoreError> {
    if data.len() != dimensions * 4 {
        return Err(StoreError::Corrupt(format!(
            "vector blob of {} bytes for {dimensions} dimensions",
            data.len()
        )));
    }
    Ok(data
        .chunks_exact(4)
        .map(|b| f32::from_le_bytes([b[0], b[1], b[2], b[3]]))
        .collect())
}

fn decode_vector_info(row: &SqliteRow) -> Result<VectorInfo, StoreError> {
    Ok(VectorInfo {
        model: column(row, "model")?,
        version: stored_u64(column(row, "version")?, "vector version")?,
        dimensions: stored_usize(column(row, "dimensions")?)?,
    })
}

/// A row of `SELECT doc_id, version, dimensions, data`.
fn decode_bulk_vector(row: &rusqlite::Row<'_>) -> Result<StoredVector, StoreError> {
    let dimensions = stored_usize(bulk::column(row, 2)?)?;
    let data = row
        .get_ref(3)
        .and_then(|value| Ok(value.as_blob()?))
        .map_err(|e| StoreError::Corrupt(format!("column data: {e}")))?;
    Ok((
        bulk::column(row, 0)?,
        stored_u64(bulk::column(row, 1)?, "vector version")?,
        decode_vector(data, dimensions)?,
    ))
}

/// A row of `SELECT id, version, metadata`.
fn decode_bulk_metadata(row: &rusqlite::Row<'_>) -> Result<StoredMetadata, StoreError> {
    let metadata: String = bulk::column(row, 2)?;
    Ok((
        bulk::column(row, 0)?,
        stored_u64(bulk::column(row, 1)?, "document version")?,
        parse_metadata(&metadata)?,
    ))
}

/// A document row without its embeddings, which come from a second query.
fn decode_document(row: &SqliteRow) -> Result<StoredDocument, StoreError> {
    Ok(StoredDocument {
        id: column(row, "id")?,
        text: column(row, "text")?,
        metadata: decode_metadata(row)?,
        version: stored_u64(column(row, "version")?, "document version")?,
        embeddings: Vec::new(),
    })
}

/// The `metadata` column of a document row, as the JSON it was written as.
fn decode_metadata(row: &SqliteRow) -> Result<serde_json::Value, StoreError> {
    parse_metadata(&column::<String>(row, "metadata")?)
}

fn parse_metadata(metadata: &str) -> Result<serde_json::Value, StoreError> {
    serde_json::from_str(metadata).map_err(|e| StoreError::Corrupt(format!("metadata: {e}")))
}

fn decode_claimed(row: &SqliteRow) -> Result<ClaimedDocument, StoreError> {
    Ok(ClaimedDocument {
        id: column(row, "id")?,
        text: column(row, "text")?,
        version: stored_u64(column(row, "version")?, "document version")?,
    })
}

fn decode_skip(row: &SqliteRow) -> Result<Skip, StoreError> {
    Ok(Skip {
        document_id: column(row, "doc_id")?,
        reason: column(row, "reason")?,
        at: decode_time(&column::<String>(row, "at")?)?,
    })
}

fn decode_migration(row: &SqliteRow) -> Result<Migration, StoreError> {
    let config: String = column(row, "config")?;
    Ok(Migration {
        id: column(row, "id")?,
        source_model: column(row, "source_model")?,
        target_model: column(row, "target_model")?,
        config: serde_json::from_str(&config)
            .map_err(|e| StoreError::Corrupt(format!("migration config: {e}")))?,
        state: decode_state(&column::<String>(row, "state")?)?,
        created_at: decode_time(&column::<String>(row, "created_at")?)?,
        started_at: decode_optional_time(row, "started_at")?,
        completed_at: decode_optional_time(row, "completed_at")?,
        rollback_window_ends_at: decode_optional_time(row, "rollback_window_ends_at")?,
        error: column(row, "error")?,
        pause_reason: column(row, "pause_reason")?,
        counts: decode_counts(row)?,
    })
}

fn decode_counts(row: &SqliteRow) -> Result<Counts, StoreError> {
    let count = |name: &str| stored_u64(column(row, name)?, name);
    Ok(Counts {
        total: count("total")?,
        processed: count("processed")?,
        skipped: count("skipped")?,
        failed: count("failed")?,
        truncated: count("truncated")?,
    })
}

#[cfg(test)]
mod tests;
