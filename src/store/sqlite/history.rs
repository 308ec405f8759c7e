//! A migration's history in SQLite: one row per entry, inserted by the transaction that makes
//! the change it tells of.

use sqlx::sqlite::SqliteRow;

use super::codec::{column, decode_optional_time, encode_time, store_error};
use super::{SqliteStore, Tx};
use crate::domain::HistoryEvent;
use crate::store::StoreError;
use crate::store::stored::{stored_actor, stored_history_kind};

/// Appends `event` to its migration's history inside `tx`.
pub(super) async fn insert_event(tx: &mut Tx, event: &HistoryEvent) -> Result<(), StoreError> {
    sqlx::query(
        "INSERT INTO migration_history (migration_id, at, kind, detail, replica, actor)
         VALUES (?1, ?2, ?3, ?4, ?5, ?6)",
    )
    .bind(&event.migration_id)
    .bind(encode_time(event.at))
    .bind(event.kind.as_str())
    .bind(&event.detail)
    .bind(&event.replica)
    .bind(event.actor.as_str())
    .execute(&mut **tx)
    .await
    .map_err(store_error)?;
    Ok(())
}

/// [`Store::history`](crate::store::Store::history) on SQLite.
pub(super) async fn history(
    store: &SqliteStore,
    migration_id: &str,
) -> Result<Vec<HistoryEvent>, StoreError> {
    let rows = sqlx::query("SELECT * FROM migration_history WHERE migration_id = ?1 ORDER BY seq")
        .bind(migration_id)
        .fetch_all(&store.reader)
        .await
        .map_err(store_error)?;
    rows.iter().map(decode_event).collect()
}

fn decode_event(row: &SqliteRow) -> Result<HistoryEvent, StoreError> {
    let kind: String = column(row, "kind")?;
    let actor: String = column(row, "actor")?;
    Ok(HistoryEvent {
        migration_id: column(row, "migration_id")?,
        at: decode_optional_time(row, "at")?
            .ok_or_else(|| StoreError::Corrupt("history entry without a time".to_owned()))?,
        kind: stored_history_kind(&kind)?,
        detail: column(row, "detail")?,
        replica: column(row, "replica")?,
        actor: stored_actor(&actor)?,
    })
}
