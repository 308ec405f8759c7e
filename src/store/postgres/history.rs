//! A migration's history in PostgreSQL: one row per entry, inserted by the transaction that
//! makes the change it tells of, whichever replica makes it.

use sqlx::postgres::PgRow;

use super::codec::{column, decode_time, split_time, store_error};
use super::{PostgresStore, Tx};
use crate::domain::HistoryEvent;
use crate::store::StoreError;
use crate::store::stored::{stored_actor, stored_history_kind};

/// Appends `event` to its migration's history inside `tx`.
pub(super) async fn insert_event(tx: &mut Tx, event: &HistoryEvent) -> Result<(), StoreError> {
    let (at, at_nanos) = split_time(event.at);
    sqlx::query(
        "INSERT INTO migration_history (migration_id, at, at_nanos, kind, detail, replica, actor)
         VALUES ($1, $2, $3, $4, $5, $6, $7)",
    )
    .bind(&event.migration_id)
    .bind(at)
    .bind(at_nanos)
    .bind(event.kind.as_str())
    .bind(&event.detail)
    .bind(&event.replica)
    .bind(event.actor.as_str())
    .execute(&mut **tx)
    .await
    .map_err(store_error)?;
    Ok(())
}

/// [`Store::history`](crate::store::Store::history) on PostgreSQL.
pub(super) async fn history(
    store: &PostgresStore,
    migration_id: &str,
) -> Result<Vec<HistoryEvent>, StoreError> {
    let rows = sqlx::query("SELECT * FROM migration_history WHERE migration_id = $1 ORDER BY seq")
        .bind(migration_id)
        .fetch_all(&store.pool)
        .await
        .map_err(store_error)?;
    rows.iter().map(decode_event).collect()
}

fn decode_event(row: &PgRow) -> Result<HistoryEvent, StoreError> {
    let kind: String = column(row, "kind")?;
    let actor: String = column(row, "actor")?;
    Ok(HistoryEvent {
        migration_id: column(row, "migration_id")?,
        at: decode_time(row, "at")?,
        kind: stored_history_kind(&kind)?,
        detail: column(row, "detail")?,
        replica: column(row, "replica")?,
        actor: stored_actor(&actor)?,
    })
}
