//! The embedded SQLite backend: one file, `reembed.db`, in the data directory.
//!
//! Durability comes from WAL with `synchronous = FULL`: a commit survives power loss, not just
//! a process crash, so every acknowledged write is on disk (invariant 5). Consistency comes
//! from a single writer connection: every method that changes data runs one transaction on it,
//! so each sees the migration state and counts the previous one committed, and the counts move
//! in the same transaction as the rows they count (invariant 4). Reads use separate read-only
//! connections, which WAL lets run beside the writer without blocking it.
//!
//! The schema and its encodings are described in `migrations/sqlite/0001_initial.sql`.
//!
//! Layout: this file opens the database and implements `Store` by delegating to one file per
//! job — `documents` (versioned writes and deletes, and reads), `migrations` (the migration
//! rows), `backfill` (the queue: claims under leases, batch commits with compare-and-set,
//! failures and skips) —
//! with `codec` for how values and errors cross into SQL, and `bulk` and `lookup` for the
//! reads that go through rusqlite. The rule of what a write does to the queue, and every count
//! it moves, comes from `domain::queue`; these files only carry it out in SQL.

mod backfill;
mod bulk;
mod codec;
mod documents;
mod history;
mod lookup;
mod migrations;
mod shadow;

use std::future::Future;
use std::path::{Path, PathBuf};
use std::sync::{Mutex, PoisonError};
use std::time::Duration;

use async_trait::async_trait;
use futures_util::stream::BoxStream;
use sqlx::sqlite::{
    SqliteConnectOptions, SqliteJournalMode, SqlitePool, SqlitePoolOptions, SqliteSynchronous,
};
use sqlx::{Connection, Sqlite, Transaction};

use super::{
    AfterCommit, BatchItem, BatchReceipt, Claim, ClaimOutcome, CleanupStep, CountsDelta,
    DocumentWrite, LeaseRequest, OverInputLimit, ReplicaProgress, Skip, Store, StoreError,
    StoredDocument, StoredMetadata, StoredVector, WriteReceipt,
};
use crate::domain::{
    Cause, ComparisonData, Counts, Evaluation, HistoryEvent, Migration, MigrationState,
    ShadowEvidence, ShadowSample,
};
use crate::run_to_end::run_to_end;
use codec::{decode_bulk_metadata, decode_bulk_vector, free_bytes, store_error};

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
        sqlx::migrate!("./migrations/sqlite")
            .run(&writer)
            .await
            .map_err(|e| StoreError::Unavailable(format!("schema migration failed: {e}")))?;
        // Opened after the migrations so that read-only connections find the schema in place.
        let reader = pool(READERS, base.read_only(true)).await?;
        let store = SqliteStore {
            writer,
            reader,
            lookups: lookup::Lookups::new(data_dir.join(DB_FILE)),
            data_dir: data_dir.to_owned(),
            write_failure: Mutex::new(None),
        };
        backfill::release_all_leases(&store).await?;
        Ok(store)
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

    async fn cut_over(
        &self,
        from: &str,
        to: &str,
        noted: &HistoryEvent,
    ) -> Result<bool, StoreError> {
        migrations::cut_over(self, from, to, noted).await
    }

    async fn write_documents_with(
        &self,
        writes: &[DocumentWrite],
        over_input_limit: OverInputLimit<'_>,
    ) -> Result<WriteReceipt, StoreError> {
        documents::write_documents_with(self, writes, over_input_limit).await
    }

    async fn delete_document(&self, id: &str) -> Result<Option<WriteReceipt>, StoreError> {
        documents::delete_document(self, id).await
    }

    async fn get_document(&self, id: &str) -> Result<Option<StoredDocument>, StoreError> {
        documents::get_document(self, id).await
    }

    async fn list_documents(
        &self,
        after: Option<&str>,
        limit: u32,
    ) -> Result<Vec<StoredDocument>, StoreError> {
        documents::list_documents(self, after, limit).await
    }

    async fn stored_documents(&self, ids: &[String]) -> Result<Vec<StoredDocument>, StoreError> {
        documents::stored_documents(self, ids).await
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
        migrations::backfill_estimate(self, target_model).await
    }

    async fn insert_migration(
        &self,
        migration: &Migration,
        noted: &HistoryEvent,
    ) -> Result<(), StoreError> {
        migrations::insert_migration(self, migration, noted).await
    }

    async fn start_migration(
        &self,
        migration: &Migration,
        noted: &HistoryEvent,
    ) -> Result<Counts, StoreError> {
        migrations::start_migration(self, migration, noted).await
    }

    async fn update_migration(
        &self,
        migration: &Migration,
        expected: MigrationState,
        noted: &HistoryEvent,
    ) -> Result<(), StoreError> {
        migrations::update_migration(self, migration, expected, noted).await
    }

    async fn complete_migration(
        &self,
        migration: &Migration,
        noted: &[HistoryEvent],
    ) -> Result<bool, StoreError> {
        migrations::complete_migration(self, migration, noted).await
    }

    async fn delete_source_vectors(
        &self,
        migration: &Migration,
        limit: u32,
        cause: &Cause,
    ) -> Result<CleanupStep, StoreError> {
        migrations::delete_source_vectors(self, migration, limit, cause).await
    }

    async fn history(&self, migration_id: &str) -> Result<Vec<HistoryEvent>, StoreError> {
        history::history(self, migration_id).await
    }

    async fn record_evaluation(
        &self,
        migration_id: &str,
        evaluation: &Evaluation,
        noted: &HistoryEvent,
    ) -> Result<(), StoreError> {
        migrations::record_evaluation(self, migration_id, evaluation, noted).await
    }

    async fn record_shadow_samples(
        &self,
        migration_id: &str,
        samples: &[ShadowSample],
        dropped: u64,
    ) -> Result<ShadowEvidence, StoreError> {
        shadow::record_shadow_samples(self, migration_id, samples, dropped).await
    }

    async fn comparison(&self, migration_id: &str) -> Result<ComparisonData, StoreError> {
        shadow::comparison(self, migration_id).await
    }

    async fn migrations(&self) -> Result<Vec<Migration>, StoreError> {
        migrations::migrations(self).await
    }

    async fn migration(&self, id: &str) -> Result<Option<Migration>, StoreError> {
        migrations::migration(self, id).await
    }

    async fn claim(
        &self,
        migration_id: &str,
        limit: u32,
        lease: &LeaseRequest,
    ) -> Result<ClaimOutcome, StoreError> {
        backfill::claim(self, migration_id, limit, lease).await
    }

    async fn renew_claim(&self, claim: &Claim, lease: &LeaseRequest) -> Result<bool, StoreError> {
        backfill::renew_claim(self, claim, lease).await
    }

    async fn commit_claimed(
        &self,
        claim: &Claim,
        items: &[BatchItem],
        tokens: u64,
        after: AfterCommit,
    ) -> Result<BatchReceipt, StoreError> {
        backfill::commit_claimed(self, claim, items, tokens, after).await
    }

    async fn release_failed(
        &self,
        claim: &Claim,
        retry_after: Duration,
    ) -> Result<CountsDelta, StoreError> {
        backfill::release_failed(self, claim, retry_after).await
    }

    async fn backfill_replicas(
        &self,
        migration_id: &str,
    ) -> Result<Vec<ReplicaProgress>, StoreError> {
        backfill::backfill_replicas(self, migration_id).await
    }

    async fn skips(&self, migration_id: &str) -> Result<Vec<Skip>, StoreError> {
        backfill::skips(self, migration_id).await
    }

    async fn requeue_skips(
        &self,
        migration_id: &str,
        noted: &HistoryEvent,
    ) -> Result<CountsDelta, StoreError> {
        backfill::requeue_skips(self, migration_id, noted).await
    }

    async fn close(&self) {
        // Readers first: the last connection to close checkpoints the WAL into the database
        // file and removes it, which only a connection that may write can do.
        self.lookups.close();
        close_pool(&self.reader).await;
        close_pool(&self.writer).await;
    }
}

#[cfg(test)]
mod tests;
