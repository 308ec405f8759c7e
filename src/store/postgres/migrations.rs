//! Migrations in PostgreSQL: one row each, its state and config changed only in transactions
//! that hold the gate exclusive and check the state they expect; starting one queues every
//! document lacking a current target vector in the same transaction. The database refuses a
//! second backfilling migration (`migrations_one_backfilling`).

use chrono::{DateTime, Utc};
use sqlx::types::Json;

use super::codec::{
    column, decode_migration, decode_state, encode_gate_override, split_optional_time, split_time,
    sql_int, store_error, stored_u64, violated_unique,
};
use super::history::insert_event;
use super::{PostgresStore, Tx};
use crate::domain::{Cause, Counts, Evaluation, HistoryEvent, Migration, MigrationState};
use crate::store::{CleanupStep, StoreError};

/// The partial unique index that admits one backfilling migration at a time.
const ONE_BACKFILLING: &str = "migrations_one_backfilling";

/// [`Store::backfill_estimate`](crate::store::Store::backfill_estimate) on PostgreSQL.
pub(super) async fn backfill_estimate(
    store: &PostgresStore,
    target_model: &str,
) -> Result<(u64, u64), StoreError> {
    let row = sqlx::query(
        "SELECT COUNT(*)::bigint AS documents,
                COALESCE(SUM(char_length(d.text)), 0)::bigint AS chars
         FROM documents d
         LEFT JOIN vectors v ON v.model = $1 AND v.doc_id = d.id
         WHERE v.doc_id IS NULL OR v.version < d.version",
    )
    .bind(target_model)
    .fetch_one(&store.pool)
    .await
    .map_err(store_error)?;
    let documents = stored_u64(column(&row, "documents")?, "document count")?;
    let chars = stored_u64(column(&row, "chars")?, "text length")?;
    Ok((documents, chars))
}

/// [`Store::insert_migration`](crate::store::Store::insert_migration) on PostgreSQL.
pub(super) async fn insert_migration(
    store: &PostgresStore,
    migration: &Migration,
    noted: &HistoryEvent,
) -> Result<(), StoreError> {
    let mut tx = store.begin_transition().await?;
    refuse_if_one_is_open(&mut tx).await?;
    insert_migration_row(&mut tx, migration).await?;
    insert_event(&mut tx, noted).await?;
    tx.commit().await.map_err(store_error)
}

/// At most one open migration (`Migration::is_open`), whichever replica creates one: the
/// exclusive gate serialises creations, and each checks the newest row at the database's
/// clock. (A replica's own check reads a snapshot that may be a second old.)
async fn refuse_if_one_is_open(tx: &mut Tx) -> Result<(), StoreError> {
    let row = sqlx::query(
        "SELECT m.*, clock_timestamp() AS checked_at FROM migrations m ORDER BY seq DESC LIMIT 1",
    )
    .fetch_optional(&mut **tx)
    .await
    .map_err(store_error)?;
    let Some(row) = row else {
        return Ok(());
    };
    let latest = decode_migration(&row)?;
    let now: DateTime<Utc> = column(&row, "checked_at")?;
    if latest.is_open(now) {
        return Err(StoreError::Conflict(format!(
            "migration {} is {} and still open; only one migration may be open at a time",
            latest.id, latest.state
        )));
    }
    Ok(())
}

/// [`Store::start_migration`](crate::store::Store::start_migration) on PostgreSQL.
pub(super) async fn start_migration(
    store: &PostgresStore,
    migration: &Migration,
    noted: &HistoryEvent,
) -> Result<Counts, StoreError> {
    let mut tx = store.begin_transition().await?;
    persist_lifecycle(&mut tx, migration, MigrationState::Planned).await?;
    insert_event(&mut tx, noted).await?;
    let queued = enqueue_stale(&mut tx, migration).await?;
    sqlx::query(
        "UPDATE migrations SET total = $2, processed = 0, skipped = 0, failed = 0, truncated = 0,
                tokens_embedded = 0
         WHERE id = $1",
    )
    .bind(&migration.id)
    .bind(sql_int(queued)?)
    .execute(&mut *tx)
    .await
    .map_err(store_error)?;
    tx.commit().await.map_err(store_error)?;
    Ok(Counts {
        total: queued,
        ..Counts::default()
    })
}

/// [`Store::update_migration`](crate::store::Store::update_migration) on PostgreSQL.
pub(super) async fn update_migration(
    store: &PostgresStore,
    migration: &Migration,
    expected: MigrationState,
    noted: &HistoryEvent,
) -> Result<(), StoreError> {
    let mut tx = store.begin_transition().await?;
    persist_lifecycle(&mut tx, migration, expected).await?;
    insert_event(&mut tx, noted).await?;
    if matches!(
        migration.state,
        MigrationState::Cancelled | MigrationState::RolledBack
    ) {
        sqlx::query("DELETE FROM backfill_queue WHERE migration_id = $1")
            .bind(&migration.id)
            .execute(&mut *tx)
            .await
            .map_err(store_error)?;
        // Nothing waits any more, so nothing is waiting after a failure.
        sqlx::query("UPDATE migrations SET failed = 0 WHERE id = $1")
            .bind(&migration.id)
            .execute(&mut *tx)
            .await
            .map_err(store_error)?;
    }
    tx.commit().await.map_err(store_error)
}

/// [`Store::complete_migration`](crate::store::Store::complete_migration) on PostgreSQL. The
/// exclusive gate keeps writes from queueing a document between the check and the commit.
pub(super) async fn complete_migration(
    store: &PostgresStore,
    migration: &Migration,
    noted: &[HistoryEvent],
) -> Result<bool, StoreError> {
    let mut tx = store.begin_transition().await?;
    let queued: bool =
        sqlx::query_scalar("SELECT EXISTS (SELECT 1 FROM backfill_queue WHERE migration_id = $1)")
            .bind(&migration.id)
            .fetch_one(&mut *tx)
            .await
            .map_err(store_error)?;
    if queued {
        return Ok(false);
    }
    persist_lifecycle(&mut tx, migration, MigrationState::InProgress).await?;
    for event in noted {
        insert_event(&mut tx, event).await?;
    }
    tx.commit().await.map_err(store_error)?;
    Ok(true)
}

/// [`Store::cut_over`](crate::store::Store::cut_over) on PostgreSQL.
pub(super) async fn cut_over(
    store: &PostgresStore,
    from: &str,
    to: &str,
    noted: &HistoryEvent,
) -> Result<bool, StoreError> {
    let mut tx = store.begin_transition().await?;
    let changed =
        sqlx::query("UPDATE meta SET value = $2 WHERE key = 'active_model' AND value = $1")
            .bind(from)
            .bind(to)
            .execute(&mut *tx)
            .await
            .map_err(store_error)?
            .rows_affected()
            > 0;
    if changed {
        insert_event(&mut tx, noted).await?;
    }
    tx.commit().await.map_err(store_error)?;
    Ok(changed)
}

/// [`Store::record_evaluation`](crate::store::Store::record_evaluation) on PostgreSQL: a
/// transition, so other replicas refresh their view (the cutover gate reads it).
pub(super) async fn record_evaluation(
    store: &PostgresStore,
    migration_id: &str,
    evaluation: &Evaluation,
    noted: &HistoryEvent,
) -> Result<(), StoreError> {
    let json = serde_json::to_string(evaluation)
        .map_err(|e| StoreError::Corrupt(format!("evaluation: {e}")))?;
    let mut tx = store.begin_transition().await?;
    let updated = sqlx::query("UPDATE migrations SET last_evaluation = $2::json WHERE id = $1")
        .bind(migration_id)
        .bind(json)
        .execute(&mut *tx)
        .await
        .map_err(store_error)?
        .rows_affected();
    if updated == 0 {
        return Err(StoreError::Conflict(format!("no migration {migration_id}")));
    }
    insert_event(&mut tx, noted).await?;
    tx.commit().await.map_err(store_error)
}

/// [`Store::migrations`](crate::store::Store::migrations) on PostgreSQL.
pub(super) async fn migrations(store: &PostgresStore) -> Result<Vec<Migration>, StoreError> {
    let rows = sqlx::query("SELECT * FROM migrations ORDER BY seq DESC")
        .fetch_all(&store.pool)
        .await
        .map_err(store_error)?;
    rows.iter().map(decode_migration).collect()
}

/// [`Store::migration`](crate::store::Store::migration) on PostgreSQL.
pub(super) async fn migration(
    store: &PostgresStore,
    id: &str,
) -> Result<Option<Migration>, StoreError> {
    let row = sqlx::query("SELECT * FROM migrations WHERE id = $1")
        .bind(id)
        .fetch_optional(&store.pool)
        .await
        .map_err(store_error)?;
    row.as_ref().map(decode_migration).transpose()
}

async fn insert_migration_row(tx: &mut Tx, m: &Migration) -> Result<(), StoreError> {
    let counts = &m.counts;
    let (created_at, created_at_nanos) = split_time(m.created_at);
    let (started_at, started_at_nanos) = split_optional_time(m.started_at);
    let (completed_at, completed_at_nanos) = split_optional_time(m.completed_at);
    let (window_ends_at, window_ends_at_nanos) = split_optional_time(m.rollback_window_ends_at);
    sqlx::query(
        "INSERT INTO migrations (id, source_model, target_model, config, state,
             created_at, created_at_nanos, started_at, started_at_nanos,
             completed_at, completed_at_nanos,
             rollback_window_ends_at, rollback_window_ends_at_nanos, error, pause_reason,
             total, processed, skipped, failed, truncated, tokens_embedded)
         VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12, $13, $14, $15,
                 $16, $17, $18, $19, $20, $21)",
    )
    .bind(&m.id)
    .bind(&m.source_model)
    .bind(&m.target_model)
    .bind(Json(&m.config))
    .bind(m.state.as_str())
    .bind(created_at)
    .bind(created_at_nanos)
    .bind(started_at)
    .bind(started_at_nanos)
    .bind(completed_at)
    .bind(completed_at_nanos)
    .bind(window_ends_at)
    .bind(window_ends_at_nanos)
    .bind(&m.error)
    .bind(&m.pause_reason)
    .bind(sql_int(counts.total)?)
    .bind(sql_int(counts.processed)?)
    .bind(sql_int(counts.skipped)?)
    .bind(sql_int(counts.failed)?)
    .bind(sql_int(counts.truncated)?)
    .bind(sql_int(counts.tokens_embedded)?)
    .execute(&mut **tx)
    .await
    .map_err(|e| lifecycle_error(e, &m.id))?;
    Ok(())
}

/// A duplicate id, or a second backfilling migration, is a client-visible conflict, not an
/// outage.
fn lifecycle_error(error: sqlx::Error, id: &str) -> StoreError {
    match violated_unique(&error) {
        Some(ONE_BACKFILLING) => {
            StoreError::Conflict(format!("another migration than {id} is backfilling"))
        }
        Some(_) => StoreError::Conflict(format!("migration {id} already exists")),
        None => store_error(error),
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
    let (started_at, started_at_nanos) = split_optional_time(m.started_at);
    let (completed_at, completed_at_nanos) = split_optional_time(m.completed_at);
    let (window_ends_at, window_ends_at_nanos) = split_optional_time(m.rollback_window_ends_at);
    sqlx::query(
        "UPDATE migrations SET config = $2, state = $3, started_at = $4, started_at_nanos = $5,
             completed_at = $6, completed_at_nanos = $7, rollback_window_ends_at = $8,
             rollback_window_ends_at_nanos = $9, error = $10, pause_reason = $11,
             gate_override = $12::json
         WHERE id = $1",
    )
    .bind(&m.id)
    .bind(Json(&m.config))
    .bind(m.state.as_str())
    .bind(started_at)
    .bind(started_at_nanos)
    .bind(completed_at)
    .bind(completed_at_nanos)
    .bind(window_ends_at)
    .bind(window_ends_at_nanos)
    .bind(&m.error)
    .bind(&m.pause_reason)
    .bind(encode_gate_override(m)?)
    .execute(&mut **tx)
    .await
    .map_err(|e| lifecycle_error(e, &m.id))?;
    Ok(())
}

async fn check_state(tx: &mut Tx, id: &str, expected: MigrationState) -> Result<(), StoreError> {
    let stored: Option<String> =
        sqlx::query_scalar("SELECT state FROM migrations WHERE id = $1 FOR UPDATE")
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
         SELECT $1, d.id FROM documents d
         LEFT JOIN vectors v ON v.model = $2 AND v.doc_id = d.id
         WHERE v.doc_id IS NULL OR v.version < d.version",
    )
    .bind(&m.id)
    .bind(&m.target_model)
    .execute(&mut **tx)
    .await
    .map_err(store_error)?;
    Ok(done.rows_affected())
}

/// [`Store::delete_source_vectors`](crate::store::Store::delete_source_vectors) on
/// PostgreSQL: under the gate shared, like batch commits; replicas deleting at once skip each
/// other's rows.
pub(super) async fn delete_source_vectors(
    store: &PostgresStore,
    migration: &Migration,
    limit: u32,
    cause: &Cause,
) -> Result<CleanupStep, StoreError> {
    let mut tx = store.begin_write().await?;
    let latest: Option<String> =
        sqlx::query_scalar("SELECT id FROM migrations ORDER BY seq DESC LIMIT 1")
            .fetch_optional(&mut *tx)
            .await
            .map_err(store_error)?;
    if latest.as_deref() != Some(migration.id.as_str()) {
        return Ok(CleanupStep::Superseded);
    }
    let deleted: Vec<String> = sqlx::query_scalar(
        "DELETE FROM vectors WHERE model = $1 AND doc_id IN
             (SELECT doc_id FROM vectors WHERE model = $1 ORDER BY doc_id LIMIT $2
              FOR UPDATE SKIP LOCKED)
         RETURNING doc_id",
    )
    .bind(&migration.source_model)
    .bind(i64::from(limit))
    .fetch_all(&mut *tx)
    .await
    .map_err(store_error)?;
    let step = if deleted.is_empty() {
        finish_cleanup(&mut tx, migration, cause).await?;
        CleanupStep::Done
    } else {
        sqlx::query(
            "UPDATE migrations SET source_vectors_deleted = source_vectors_deleted + $2
             WHERE id = $1",
        )
        .bind(&migration.id)
        .bind(sql_int(deleted.len())?)
        .execute(&mut *tx)
        .await
        .map_err(store_error)?;
        CleanupStep::Deleted(deleted)
    };
    tx.commit().await.map_err(store_error)?;
    Ok(step)
}

/// Marks `migration`'s cleanup done and records it, unless it was already.
async fn finish_cleanup(
    tx: &mut Tx,
    migration: &Migration,
    cause: &Cause,
) -> Result<(), StoreError> {
    let now = Utc::now();
    let (at, at_nanos) = split_time(now);
    let deleted: Option<i64> = sqlx::query_scalar(
        "UPDATE migrations SET cleanup_done_at = $2, cleanup_done_at_nanos = $3
         WHERE id = $1 AND cleanup_done_at IS NULL
         RETURNING source_vectors_deleted",
    )
    .bind(&migration.id)
    .bind(at)
    .bind(at_nanos)
    .fetch_optional(&mut **tx)
    .await
    .map_err(store_error)?;
    let Some(deleted) = deleted else {
        return Ok(());
    };
    let deleted = stored_u64(deleted, "deleted vectors")?;
    insert_event(
        tx,
        &HistoryEvent::source_vectors_deleted(migration, deleted, now, cause),
    )
    .await
}
