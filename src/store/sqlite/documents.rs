//! Documents and their vectors in SQLite: versioned upserts and deletes with tombstones, each
//! carrying out `domain::queue`'s plan for the backfilling migration in the same transaction
//! and re-stamping the vectors a write keeps (`store::Kept`), and the reads of single
//! documents, pages and the documents a write is about to replace.

use std::collections::HashMap;

use async_trait::async_trait;
use chrono::Utc;
use sqlx::sqlite::{SqliteConnection, SqliteRow};

use super::backfill::{apply_delta, dequeue, enqueue};
use super::codec::{
    column, decode_document, decode_joined_vector_info, decode_optional_time, decode_state,
    decode_vector_info, encode_json, encode_vector, sql_int, store_error, stored_u64,
};
use super::{SqliteStore, Tx};
use crate::domain::Counts;
use crate::domain::queue::QueueView;
use crate::store::stored::documents_from_join;
use crate::store::writes::{DocumentTx, delete_document as remove, write_documents};
use crate::store::{
    CountsDelta, DocumentWrite, Kept, OverInputLimit, StoreError, StoredDocument, VectorInfo,
    WriteReceipt,
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
            let mut documents = WriteTx(&mut tx);
            let receipt =
                write_documents(&mut documents, latest.as_ref(), writes, over_input_limit).await?;
            tx.commit().await.map_err(store_error)?;
            Ok(receipt)
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
            let mut documents = WriteTx(&mut tx);
            let receipt = remove(&mut documents, latest.as_ref(), id, version).await?;
            tx.commit().await.map_err(store_error)?;
            Ok(Some(receipt))
        })
        .await
}

/// A write transaction, as the shared write path drives it (`store::writes`).
struct WriteTx<'t>(&'t mut Tx);

#[async_trait]
impl DocumentTx for WriteTx<'_> {
    async fn upsert_document(&mut self, write: &DocumentWrite) -> Result<u64, StoreError> {
        upsert_document(self.0, write).await
    }

    async fn stored_text(&mut self, id: &str) -> Result<Option<(u64, String)>, StoreError> {
        stored_text(self.0, id).await
    }

    async fn restamp_vectors(
        &mut self,
        id: &str,
        kept: &Kept,
        version: u64,
    ) -> Result<usize, StoreError> {
        restamp_vectors(self.0, id, kept, version).await
    }

    async fn remove_document(&mut self, id: &str, version: u64) -> Result<(), StoreError> {
        remove_document(self.0, id, version).await
    }

    async fn enqueue(&mut self, migration_id: &str, doc_id: &str) -> Result<bool, StoreError> {
        enqueue(self.0, migration_id, doc_id).await
    }

    async fn dequeue(
        &mut self,
        migration_id: &str,
        doc_id: &str,
    ) -> Result<Option<bool>, StoreError> {
        dequeue(self.0, migration_id, doc_id).await
    }

    async fn add_counts(
        &mut self,
        migration_id: &str,
        delta: CountsDelta,
    ) -> Result<(), StoreError> {
        apply_delta(self.0, migration_id, delta).await
    }
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

/// [`Store::stored_documents`](crate::store::Store::stored_documents) on SQLite: the documents
/// and their embeddings in one statement, so one snapshot without a transaction. Every write
/// reads this first (`Kept`), so it costs one round trip to the reader, not four.
pub(super) async fn stored_documents(
    store: &SqliteStore,
    ids: &[String],
) -> Result<Vec<StoredDocument>, StoreError> {
    if ids.is_empty() {
        return Ok(Vec::new());
    }
    // One JSON array bind instead of one placeholder per id: no limit on the id count.
    let ids = serde_json::to_string(ids).map_err(|e| StoreError::Corrupt(e.to_string()))?;
    let rows = sqlx::query(
        "SELECT d.id, d.text, d.metadata, d.version,
                v.model, v.version AS vector_version, v.dimensions
         FROM documents d LEFT JOIN vectors v ON v.doc_id = d.id
         WHERE d.id IN (SELECT value FROM json_each(?1))
         ORDER BY d.id, v.model",
    )
    .bind(&ids)
    .fetch_all(&store.reader)
    .await
    .map_err(store_error)?;
    documents_from_join(
        &rows,
        |row| column(row, "id"),
        decode_document,
        decode_joined_vector_info,
    )
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
    let embeddings = page_embeddings(&mut tx, after, limit).await?;
    with_embeddings(&rows, embeddings)
}

/// The documents of `rows`, each with its embeddings from `embeddings` (none if absent).
fn with_embeddings(
    rows: &[SqliteRow],
    mut embeddings: HashMap<String, Vec<VectorInfo>>,
) -> Result<Vec<StoredDocument>, StoreError> {
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

async fn stored_text(tx: &mut Tx, id: &str) -> Result<Option<(u64, String)>, StoreError> {
    let row = sqlx::query("SELECT version, text FROM documents WHERE id = ?1")
        .bind(id)
        .fetch_optional(&mut **tx)
        .await
        .map_err(store_error)?;
    row.map(|row| {
        let version = stored_u64(column(&row, "version")?, "document version")?;
        Ok((version, column(&row, "text")?))
    })
    .transpose()
}

async fn restamp_vectors(
    tx: &mut Tx,
    id: &str,
    kept: &Kept,
    version: u64,
) -> Result<usize, StoreError> {
    let models =
        serde_json::to_string(&kept.models).map_err(|e| StoreError::Corrupt(e.to_string()))?;
    let moved = sqlx::query(
        "UPDATE vectors SET version = ?1
         WHERE doc_id = ?2 AND version = ?3 AND model IN (SELECT value FROM json_each(?4))",
    )
    .bind(sql_int(version)?)
    .bind(id)
    .bind(sql_int(kept.version)?)
    .bind(models)
    .execute(&mut **tx)
    .await
    .map_err(store_error)?
    .rows_affected();
    usize::try_from(moved).map_err(|_| StoreError::Corrupt(format!("{moved} vectors moved")))
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
    group_by_document(&rows)
}

/// Rows of `SELECT doc_id, model, version, dimensions` grouped by document, in row order.
fn group_by_document(rows: &[SqliteRow]) -> Result<HashMap<String, Vec<VectorInfo>>, StoreError> {
    let mut grouped: HashMap<String, Vec<VectorInfo>> = HashMap::new();
    for row in rows {
        let info = decode_vector_info(row)?;
        grouped
            .entry(column(row, "doc_id")?)
            .or_default()
            .push(info);
    }
    Ok(grouped)
}
