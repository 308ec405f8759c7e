//! Documents and their vectors in SQLite: versioned upserts and deletes with tombstones, each
//! carrying out `domain::queue`'s plan for the backfilling migration in the same transaction,
//! and the reads of single documents and pages.

use std::collections::HashMap;

use chrono::Utc;
use sqlx::sqlite::SqliteConnection;

use super::backfill::{dequeue, enqueue, record_delta};
use super::codec::{
    column, decode_document, decode_optional_time, decode_state, decode_vector_info, encode_json,
    encode_vector, sql_int, store_error, stored_u64,
};
use super::{SqliteStore, Tx};
use crate::domain::Counts;
use crate::domain::queue::{self, QueueChange, QueueStep, QueueView};
use crate::store::{
    CountsDelta, DocumentWrite, OverInputLimit, StoreError, StoredDocument, VectorInfo,
    WriteOutcome, WriteReceipt,
};

/// [`Store::write_documents_with`](crate::store::Store::write_documents_with) on SQLite.
pub(super) async fn write_documents_with(
    store: &SqliteStore,
    writes: &[DocumentWrite],
    over_input_limit: OverInputLimit<'_>,
) -> Result<WriteReceipt, StoreError> {
    store
        .write(async {
            let mut tx = store.begin_write().await?;
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

/// [`Store::delete_document`](crate::store::Store::delete_document) on SQLite.
pub(super) async fn delete_document(
    store: &SqliteStore,
    id: &str,
) -> Result<Option<WriteReceipt>, StoreError> {
    store
        .write(async {
            let mut tx = store.begin_write().await?;
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

/// [`Store::get_document`](crate::store::Store::get_document) on SQLite.
pub(super) async fn get_document(
    store: &SqliteStore,
    id: &str,
) -> Result<Option<StoredDocument>, StoreError> {
    let mut tx = store.begin_read().await?;
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

/// [`Store::list_documents`](crate::store::Store::list_documents) on SQLite.
pub(super) async fn list_documents(
    store: &SqliteStore,
    after: Option<&str>,
    limit: u32,
) -> Result<Vec<StoredDocument>, StoreError> {
    let mut tx = store.begin_read().await?;
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

pub(super) async fn upsert_vector(
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
            newly: enqueue(tx, &migration.id, &write.id).await?,
        }),
        QueueStep::Dequeue => dequeue(tx, &migration.id, &write.id)
            .await?
            .map(|had_failed| QueueChange::Embedded {
                had_failed,
                truncated: over_input_limit(&migration.target_model, &write.text),
            }),
    })
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
