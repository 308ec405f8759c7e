//! Migrations in SQLite: one row each, its state and config changed only in transactions that
//! check the state they expect, and starting one queues every document lacking a current
//! target vector in the same transaction.

use chrono::Utc;

use super::codec::{
    column, decode_migration, decode_state, encode_config, encode_gate_override, encode_time,
    sql_int, store_error, stored_u64,
};
use super::history::insert_event;
use super::{SqliteStore, Tx};
use crate::domain::{Cause, Counts, Evaluation, HistoryEvent, Migration, MigrationState};
use crate::store::{CleanupStep, StoreError};

/// [`Store::backfill_estimate`](crate::store::Store::backfill_estimate) on SQLite.
pub(super) async fn backfill_estimate(
    store: &SqliteStore,
    target_model: &str,
) -> Result<(u64, u64), StoreError> {
    let row = sqlx::query(
        "SELECT COUNT(*) AS documents, COALESCE(SUM(LENGTH(d.text)), 0) AS chars
         FROM documents d
         LEFT JOIN vectors v ON v.model = ?1 AND v.doc_id = d.id
         WHERE v.doc_id IS NULL OR v.version < d.version",
    )
    .bind(target_model)
    .fetch_one(&store.reader)
    .await
    .map_err(store_error)?;
    let documents = stored_u64(column(&row, "documents")?, "document count")?;
    let chars = stored_u64(column(&row, "chars")?, "text length")?;
    Ok((documents, chars))
}

/// [`Store::insert_migration`](crate::store::Store::insert_migration) on SQLite.
pub(super) async fn insert_migration(
    store: &SqliteStore,
    migration: &Migration,
    noted: &HistoryEvent,
) -> Result<(), StoreError> {
    store
        .write(async {
            let mut tx = store.begin_write().await?;
            refuse_if_one_is_open(&mut tx).await?;
            insert_migration_row(&mut tx, migration).await?;
            insert_event(&mut tx, noted).await?;
            tx.commit().await.map_err(store_error)
        })
        .await
}

/// At most one open migration (`Migration::is_open`): the newest row is checked in the
/// inserting transaction.
async fn refuse_if_one_is_open(tx: &mut Tx) -> Result<(), StoreError> {
    let row = sqlx::query("SELECT * FROM migrations ORDER BY seq DESC LIMIT 1")
        .fetch_optional(&mut **tx)
        .await
        .map_err(store_error)?;
    let Some(latest) = row.as_ref().map(decode_migration).transpose()? else {
        return Ok(());
    };
    if latest.is_open(Utc::now()) {
        return Err(StoreError::Conflict(format!(
            "migration {} is {} and still open; only one migration may be open at a time",
            latest.id, latest.state
        )));
    }
    Ok(())
}

/// [`Store::start_migration`](crate::store::Store::start_migration) on SQLite.
pub(super) async fn start_migration(
    store: &SqliteStore,
    migration: &Migration,
    noted: &HistoryEvent,
) -> Result<Counts, StoreError> {
    store
        .write(async {
            let mut tx = store.begin_write().await?;
            persist_lifecycle(&mut tx, migration, MigrationState::Planned).await?;
            insert_event(&mut tx, noted).await?;
            let queued = enqueue_stale(&mut tx, migration).await?;
            let counts = Counts {
                total: queued,
                ..Counts::default()
            };
            sqlx::query(
            "UPDATE migrations SET total = ?2, processed = 0, skipped = 0, failed = 0, truncated = 0,
                tokens_embedded = 0
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

/// [`Store::update_migration`](crate::store::Store::update_migration) on SQLite.
pub(super) async fn update_migration(
    store: &SqliteStore,
    migration: &Migration,
    expected: MigrationState,
    noted: &HistoryEvent,
) -> Result<(), StoreError> {
    store
        .write(async {
            let mut tx = store.begin_write().await?;
            persist_lifecycle(&mut tx, migration, expected).await?;
            insert_event(&mut tx, noted).await?;
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

/// [`Store::complete_migration`](crate::store::Store::complete_migration) on SQLite.
pub(super) async fn complete_migration(
    store: &SqliteStore,
    migration: &Migration,
    noted: &[HistoryEvent],
) -> Result<bool, StoreError> {
    store
        .write(async {
            let mut tx = store.begin_write().await?;
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
            for event in noted {
                insert_event(&mut tx, event).await?;
            }
            tx.commit().await.map_err(store_error)?;
            Ok(true)
        })
        .await
}

/// [`Store::cut_over`](crate::store::Store::cut_over) on SQLite.
pub(super) async fn cut_over(
    store: &SqliteStore,
    from: &str,
    to: &str,
    noted: &HistoryEvent,
) -> Result<bool, StoreError> {
    store
        .write(async {
            let mut tx = store.begin_write().await?;
            let changed =
                sqlx::query("UPDATE meta SET value = ?2 WHERE key = 'active_model' AND value = ?1")
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
        })
        .await
}

/// [`Store::record_evaluation`](crate::store::Store::record_evaluation) on SQLite.
pub(super) async fn record_evaluation(
    store: &SqliteStore,
    migration_id: &str,
    evaluation: &Evaluation,
    noted: &HistoryEvent,
) -> Result<(), StoreError> {
    let json = serde_json::to_string(evaluation)
        .map_err(|e| StoreError::Corrupt(format!("evaluation: {e}")))?;
    store
        .write(async {
            let mut tx = store.begin_write().await?;
            let updated = sqlx::query("UPDATE migrations SET last_evaluation = ?2 WHERE id = ?1")
                .bind(migration_id)
                .bind(&json)
                .execute(&mut *tx)
                .await
                .map_err(store_error)?
                .rows_affected();
            if updated == 0 {
                return Err(StoreError::Conflict(format!("no migration {migration_id}")));
            }
            insert_event(&mut tx, noted).await?;
            tx.commit().await.map_err(store_error)
        })
        .await
}

/// [`Store::migrations`](crate::store::Store::migrations) on SQLite.
pub(super) async fn migrations(store: &SqliteStore) -> Result<Vec<Migration>, StoreError> {
    let rows = sqlx::query("SELECT * FROM migrations ORDER BY seq DESC")
        .fetch_all(&store.reader)
        .await
        .map_err(store_error)?;
    rows.iter().map(decode_migration).collect()
}

/// [`Store::migration`](crate::store::Store::migration) on SQLite.
pub(super) async fn migration(
    store: &SqliteStore,
    id: &str,
) -> Result<Option<Migration>, StoreError> {
    let row = sqlx::query("SELECT * FROM migrations WHERE id = ?1")
        .bind(id)
        .fetch_optional(&store.reader)
        .await
        .map_err(store_error)?;
    row.as_ref().map(decode_migration).transpose()
}

async fn insert_migration_row(tx: &mut Tx, m: &Migration) -> Result<(), StoreError> {
    let counts = &m.counts;
    sqlx::query(
        "INSERT INTO migrations (id, source_model, target_model, config, state, created_at,
             started_at, completed_at, rollback_window_ends_at, error, pause_reason,
             total, processed, skipped, failed, truncated, tokens_embedded)
         VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10, ?11, ?12, ?13, ?14, ?15, ?16, ?17)",
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
    .bind(sql_int(counts.tokens_embedded)?)
    .execute(&mut **tx)
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
             rollback_window_ends_at = ?6, error = ?7, pause_reason = ?8, gate_override = ?9
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
    .bind(encode_gate_override(m)?)
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

/// [`Store::delete_source_vectors`](crate::store::Store::delete_source_vectors) on SQLite.
pub(super) async fn delete_source_vectors(
    store: &SqliteStore,
    migration: &Migration,
    limit: u32,
    cause: &Cause,
) -> Result<CleanupStep, StoreError> {
    store
        .write(async {
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
                "DELETE FROM vectors WHERE model = ?1 AND doc_id IN
                     (SELECT doc_id FROM vectors WHERE model = ?1 ORDER BY doc_id LIMIT ?2)
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
                    "UPDATE migrations SET source_vectors_deleted = source_vectors_deleted + ?2
                     WHERE id = ?1",
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
        })
        .await
}

/// Marks `migration`'s cleanup done and records it, unless it was already.
async fn finish_cleanup(
    tx: &mut Tx,
    migration: &Migration,
    cause: &Cause,
) -> Result<(), StoreError> {
    let now = Utc::now();
    let finished = sqlx::query(
        "UPDATE migrations SET cleanup_done_at = ?2 WHERE id = ?1 AND cleanup_done_at IS NULL",
    )
    .bind(&migration.id)
    .bind(encode_time(now))
    .execute(&mut **tx)
    .await
    .map_err(store_error)?
    .rows_affected();
    if finished == 0 {
        return Ok(());
    }
    let deleted: i64 =
        sqlx::query_scalar("SELECT source_vectors_deleted FROM migrations WHERE id = ?1")
            .bind(&migration.id)
            .fetch_one(&mut **tx)
            .await
            .map_err(store_error)?;
    let deleted = stored_u64(deleted, "deleted vectors")?;
    insert_event(
        tx,
        &HistoryEvent::source_vectors_deleted(migration, deleted, now, cause),
    )
    .await
}
