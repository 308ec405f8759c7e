//! The PostgreSQL backend, for several replicas sharing one database: documents, vectors in
//! pgvector, migrations and the backfill queue, with the same schema meaning as SQLite's
//! (`migrations/postgres/0001_initial.sql` describes the tables and encodings).
//!
//! Consistency never depends on a process's memory, since several processes write. It rests
//! on one transaction-scoped advisory lock, the *gate* ([`GATE`]):
//! - every transaction that changes documents or the queue (a write, a delete, a batch commit,
//!   failures, re-queued skips) first takes the gate *shared*: they run side by side;
//! - every migration state transition (insert, start, update, complete) takes it *exclusive*.
//!
//! So a write never interleaves with a start that queues the documents lacking a target
//! vector, nor with a completion that checks the queue is empty. Under READ COMMITTED each
//! statement sees what was committed before it began, so the write's read of the latest
//! migration row, made after it holds the gate, is fresh: the write queues or dequeues by what
//! the database holds (`domain::queue`), never by a replica's snapshot. Writers running side by
//! side meet in two places only: the rows of the documents they touch (locked `FOR UPDATE` by
//! a write or a delete, `FOR SHARE` by a batch's compare-and-set, always in id order at the
//! start of the transaction) and the migration row, whose counts move by
//! `UPDATE ... SET total = total + $n` as the transaction's last statement, so the row lock is
//! held only for the commit. A deadlock or serialization failure the database resolves reaches
//! the caller as `Conflict` (nothing was written; retry).
//!
//! At most one migration backfills at a time, enforced by a partial unique index over the
//! backfilling states (`migrations_one_backfilling`); violating it is a `Conflict`.
//!
//! Start-up ([`PostgresStore::connect`]) takes a session advisory lock ([`SCHEMA_LOCK`]) on a
//! connection of its own, creates the `vector` extension if missing and checks its version
//! (pgvector 0.8 or newer), and runs the schema migrations (`migrations/postgres/`), so
//! replicas starting at once migrate one after the other and the later ones find nothing to do.
//!
//! Vectors are bound as `real[]` and cast to `vector` in SQL, and read back as `real[]`: no
//! pgvector client type is needed. pgvector stores finite values only (no NaN or infinity),
//! unlike SQLite's blobs. Timestamps are `TIMESTAMPTZ` plus the nanoseconds below the
//! microsecond, so they round-trip exactly as on SQLite. Large reads (`vectors`, `metadata`)
//! stream rows from the server in id order; nothing collects them.
//!
//! Layout, as for SQLite: this file connects and implements `Store` by delegating to
//! `documents` (versioned writes, deletes and reads), `migrations` (the migration rows) and
//! `backfill` (the queue: claims under leases shared by every replica, batch commits with
//! compare-and-set, failures and skips), with
//! `codec` for how values and errors cross into SQL.

mod backfill;
mod codec;
mod documents;
mod history;
mod migrations;
mod search;
mod shadow;

use std::str::FromStr;
use std::time::Duration;

use async_trait::async_trait;
use chrono::{DateTime, Utc};
use futures_util::StreamExt;
use futures_util::stream::BoxStream;
use sqlx::postgres::{PgConnectOptions, PgListener, PgPool, PgPoolOptions};
use sqlx::{Postgres, Transaction};

use super::{
    AfterCommit, BatchItem, BatchReceipt, Claim, ClaimOutcome, CleanupStep, CountsDelta,
    DocumentWrite, LeaseRequest, OverInputLimit, ReplicaProgress, Skip, Store, StoreError,
    StoredDocument, StoredMetadata, StoredVector, VectorSearch, WriteReceipt,
};
use crate::domain::{
    Cause, ComparisonData, Counts, Evaluation, HistoryEvent, Migration, MigrationState,
    ShadowEvidence, ShadowSample,
};
use crate::run_to_end::run_to_end;
use codec::{decode_metadata, decode_vector, store_error};

/// Connections per process unless told otherwise: enough for concurrent API reads, writes and
/// backfill batches, few enough that many replicas stay under the server's `max_connections`.
pub const DEFAULT_CONNECTIONS: u32 = 8;

/// The advisory lock key of the gate between data changes (shared) and migration state
/// transitions (exclusive); see the module doc. An arbitrary constant ("reembed" in ASCII).
const GATE: i64 = 0x0072_6565_6d62_6564;

/// The session advisory lock key held while the schema is checked and migrated at start-up.
const SCHEMA_LOCK: i64 = GATE + 1;

/// The oldest pgvector accepted: iterative index scans, which filtered queries need, came
/// in 0.8.0.
const MIN_PGVECTOR: (u32, u32, u32) = (0, 8, 0);

type Tx = Transaction<'static, Postgres>;

/// The LISTEN/NOTIFY channel on which a replica announces a change to a migration or to the
/// active model; the others refresh their routing snapshot at once instead of at their next
/// poll.
const CHANGES_CHANNEL: &str = "reembed_migrations";

/// Announces a change on [`CHANGES_CHANNEL`] when `tx` commits.
async fn notify_change(tx: &mut Tx) -> Result<(), StoreError> {
    sqlx::query("SELECT pg_notify($1, '')")
        .bind(CHANGES_CHANNEL)
        .execute(&mut **tx)
        .await
        .map_err(store_error)?;
    Ok(())
}

/// The PostgreSQL implementation of [`Store`], shared by any number of replicas.
pub struct PostgresStore {
    /// Every statement goes through this pool; transactions coordinate through the database
    /// (the gate lock and row locks), never through this process.
    pool: PgPool,
    /// Listens on [`CHANGES_CHANNEL`] once someone waits for a change; dropped after an error
    /// and connected again at the next wait (notifications sent meanwhile are lost, which
    /// the caller's polling covers).
    listener: tokio::sync::Mutex<Option<PgListener>>,
    /// Each prepared model's query settings (`search`), written at start-up.
    search: search::Settings,
}

impl PostgresStore {
    /// Connects to the database at `url` with a pool of `connections`, after making sure the
    /// `vector` extension is there and recent enough and the schema is up to date.
    pub async fn connect(url: &str, connections: u32) -> Result<PostgresStore, StoreError> {
        let options = PgConnectOptions::from_str(url)
            .map_err(|e| StoreError::Unavailable(format!("bad database URL: {e}")))?;
        Self::connect_with(options, connections).await
    }

    /// [`connect`](Self::connect) with options already parsed.
    pub async fn connect_with(
        options: PgConnectOptions,
        connections: u32,
    ) -> Result<PostgresStore, StoreError> {
        prepare_schema(&options).await?;
        let pool = PgPoolOptions::new()
            .max_connections(connections)
            .connect_with(options)
            .await
            .map_err(store_error)?;
        Ok(PostgresStore {
            pool,
            listener: tokio::sync::Mutex::new(None),
            search: search::Settings::default(),
        })
    }

    /// A listener on [`CHANGES_CHANNEL`].
    async fn listen(&self) -> Result<PgListener, StoreError> {
        let mut listener = PgListener::connect_with(&self.pool)
            .await
            .map_err(store_error)?;
        listener
            .listen(CHANGES_CHANNEL)
            .await
            .map_err(store_error)?;
        Ok(listener)
    }

    /// A transaction that changes documents or the queue, holding the gate shared.
    async fn begin_write(&self) -> Result<Tx, StoreError> {
        self.begin_gated("SELECT pg_advisory_xact_lock_shared($1)")
            .await
    }

    /// A transaction that changes a migration's state, holding the gate exclusive. It
    /// notifies the other replicas on [`CHANGES_CHANNEL`] when it commits (PostgreSQL delivers
    /// a notification at commit, and drops it with a rollback).
    async fn begin_transition(&self) -> Result<Tx, StoreError> {
        let mut tx = self.begin_gated("SELECT pg_advisory_xact_lock($1)").await?;
        notify_change(&mut tx).await?;
        Ok(tx)
    }

    /// Begins a transaction and takes the gate with `lock`. Both run to their end whoever
    /// waits (`run_to_end`): sqlx 0.8 counts a PostgreSQL transaction as begun only once the
    /// server has answered `BEGIN`, so a caller dropped in between would hand the connection
    /// back inside a transaction sqlx does not know of, and the next autocommit statement on it
    /// would never commit. A transaction handed to nobody is dropped, which rolls it back and
    /// releases the gate.
    async fn begin_gated(&self, lock: &'static str) -> Result<Tx, StoreError> {
        let pool = self.pool.clone();
        run_to_end(async move {
            let mut tx = pool.begin().await.map_err(store_error)?;
            sqlx::query(lock)
                .bind(GATE)
                .execute(&mut *tx)
                .await
                .map_err(store_error)?;
            Ok(tx)
        })
        .await
    }
}

/// Creates the `vector` extension if needed, checks its version and migrates the schema, under
/// a session advisory lock so that replicas starting together take turns. The lock is taken
/// on a pool of exactly one connection, so every statement after it runs on the connection
/// that holds it (sqlx's migrator takes a pool more readily than a connection); closing the
/// pool releases it, also when this fails.
async fn prepare_schema(options: &PgConnectOptions) -> Result<(), StoreError> {
    let connection = PgPoolOptions::new()
        .max_connections(1)
        .connect_with(options.clone())
        .await
        .map_err(store_error)?;
    let result = locked_prepare(&connection).await;
    connection.close().await;
    result
}

async fn locked_prepare(connection: &PgPool) -> Result<(), StoreError> {
    sqlx::query("SELECT pg_advisory_lock($1)")
        .bind(SCHEMA_LOCK)
        .execute(connection)
        .await
        .map_err(store_error)?;
    ensure_pgvector(connection).await?;
    sqlx::migrate!("./migrations/postgres")
        .run(connection)
        .await
        .map_err(|e| StoreError::Unavailable(format!("schema migration failed: {e}")))?;
    sqlx::query("SELECT pg_advisory_unlock($1)")
        .bind(SCHEMA_LOCK)
        .execute(connection)
        .await
        .map_err(store_error)?;
    Ok(())
}

/// Creates the `vector` extension unless it exists, and refuses a version older than
/// [`MIN_PGVECTOR`], naming what is missing and what is needed.
async fn ensure_pgvector(connection: &PgPool) -> Result<(), StoreError> {
    sqlx::query("CREATE EXTENSION IF NOT EXISTS vector")
        .execute(connection)
        .await
        .map_err(|e| {
            StoreError::Unavailable(format!(
                "the database lacks the pgvector extension `vector` and it could not be \
                 created ({e}); install pgvector 0.8 or newer (0.8.4 or newer recommended) on \
                 the server, or have a superuser run CREATE EXTENSION vector"
            ))
        })?;
    let version: String =
        sqlx::query_scalar("SELECT extversion FROM pg_extension WHERE extname = 'vector'")
            .fetch_one(connection)
            .await
            .map_err(store_error)?;
    if pgvector_supported(&version) {
        Ok(())
    } else {
        Err(StoreError::Unavailable(format!(
            "the database has pgvector {version}, but reembed needs 0.8.0 or newer (0.8.4 or \
             newer recommended): run ALTER EXTENSION vector UPDATE after upgrading pgvector"
        )))
    }
}

/// Whether an `extversion` such as "0.8.2" is at least [`MIN_PGVECTOR`]; a version that does
/// not parse is not.
fn pgvector_supported(version: &str) -> bool {
    let mut parts = version.split('.').map(|part| part.parse::<u32>().ok());
    let mut next = || parts.next().unwrap_or(Some(0));
    match (next(), next(), next()) {
        (Some(major), Some(minor), Some(patch)) => (major, minor, patch) >= MIN_PGVECTOR,
        _ => false,
    }
}

#[async_trait]
impl Store for PostgresStore {
    async fn ping(&self) -> Result<(), StoreError> {
        sqlx::query("SELECT 1")
            .execute(&self.pool)
            .await
            .map_err(store_error)?;
        Ok(())
    }

    async fn active_model(&self) -> Result<Option<String>, StoreError> {
        sqlx::query_scalar("SELECT value FROM meta WHERE key = 'active_model'")
            .fetch_optional(&self.pool)
            .await
            .map_err(store_error)
    }

    async fn set_active_model(&self, model: &str) -> Result<(), StoreError> {
        sqlx::query(
            "INSERT INTO meta (key, value) VALUES ('active_model', $1)
             ON CONFLICT (key) DO UPDATE SET value = excluded.value",
        )
        .bind(model)
        .execute(&self.pool)
        .await
        .map_err(store_error)?;
        Ok(())
    }

    async fn cut_over(
        &self,
        from: &str,
        to: &str,
        noted: &HistoryEvent,
    ) -> Result<bool, StoreError> {
        migrations::cut_over(self, from, to, noted).await
    }

    fn is_shared(&self) -> bool {
        true
    }

    async fn wait_for_migration_change(&self, timeout: Duration) {
        let mut listener = self.listener.lock().await;
        if listener.is_none() {
            match self.listen().await {
                Ok(connected) => *listener = Some(connected),
                Err(error) => {
                    tracing::warn!(%error, "cannot listen for migration changes; polling only");
                    drop(listener);
                    tokio::time::sleep(timeout).await;
                    return;
                }
            }
        }
        let Some(connected) = listener.as_mut() else {
            return;
        };
        match tokio::time::timeout(timeout, connected.recv()).await {
            Ok(Ok(_)) | Err(_) => {}
            Ok(Err(error)) => {
                tracing::warn!(%error, "lost the migration change listener; reconnecting");
                *listener = None;
            }
        }
    }

    async fn clock(&self) -> Result<Option<DateTime<Utc>>, StoreError> {
        let now: DateTime<Utc> = sqlx::query_scalar("SELECT clock_timestamp()")
            .fetch_one(&self.pool)
            .await
            .map_err(store_error)?;
        Ok(Some(now))
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
        documents::hit_documents(self, ids).await
    }

    fn metadata(&self) -> BoxStream<'_, Result<StoredMetadata, StoreError>> {
        sqlx::query(
            "SELECT id, version, metadata::text AS metadata FROM documents
             WHERE metadata::jsonb NOT IN ('{}'::jsonb, 'null'::jsonb) ORDER BY id",
        )
        .fetch(&self.pool)
        .map(|row| decode_metadata(&row.map_err(store_error)?))
        .boxed()
    }

    fn vectors<'a>(&'a self, model: &'a str) -> BoxStream<'a, Result<StoredVector, StoreError>> {
        sqlx::query(
            "SELECT doc_id, version, embedding::real[] AS embedding FROM vectors
             WHERE model = $1 ORDER BY doc_id",
        )
        .bind(model)
        .fetch(&self.pool)
        .map(|row| decode_vector(&row.map_err(store_error)?))
        .boxed()
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

    /// pgvector's HNSW indexes, one per model (`search`).
    fn vector_search(&self) -> Option<&dyn VectorSearch> {
        Some(self)
    }

    async fn close(&self) {
        self.pool.close().await;
    }
}

#[cfg(test)]
mod tests;
