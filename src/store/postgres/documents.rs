//! Documents and their vectors in PostgreSQL: versioned upserts and deletes with tombstones,
//! each carrying out `domain::queue`'s plan for the backfilling migration in the same
//! transaction and re-stamping the vectors a write keeps (`store::Kept`), and the reads of
//! single documents, pages, query hits and the documents a write is about to replace.

use std::collections::HashMap;

use async_trait::async_trait;
use chrono::Utc;
use sqlx::PgConnection;
use sqlx::postgres::PgRow;

use super::backfill::{apply_delta, dequeue, enqueue};
use super::codec::{
    check_vector, column, decode_counts, decode_document, decode_joined_vector_info, decode_state,
    decode_vector_info, decode_window_end, encode_metadata, sql_int, store_error, stored_u64,
};
use super::{PostgresStore, Tx};
use crate::domain::queue::QueueView;
use crate::run_to_end::run_to_end_unanswered;
use crate::store::stored::documents_from_join;
use crate::store::writes::{DocumentTx, delete_document as remove, write_documents};
use crate::store::{
    CountsDelta, DocumentWrite, Kept, OverInputLimit, StoreError, StoredDocument, VectorInfo,
    WriteReceipt,
};

/// [`Store::write_documents_with`](crate::store::Store::write_documents_with) on PostgreSQL.
pub(super) async fn write_documents_with(
    store: &PostgresStore,
    writes: &[DocumentWrite],
    over_input_limit: OverInputLimit<'_>,
) -> Result<WriteReceipt, StoreError> {
    for write in writes {
        for (model, vector) in &write.vectors {
            check_vector(model, vector)?;
        }
    }
    let mut tx = store.begin_write().await?;
    let latest = latest_migration(&mut tx).await?;
    let ids: Vec<&str> = writes.iter().map(|w| w.id.as_str()).collect();
    lock_documents(&mut tx, &ids).await?;
    let mut documents = WriteTx(&mut tx);
    let receipt =
        write_documents(&mut documents, latest.as_ref(), writes, over_input_limit).await?;
    tx.commit().await.map_err(store_error)?;
    Ok(receipt)
}

/// [`Store::delete_document`](crate::store::Store::delete_document) on PostgreSQL.
pub(super) async fn delete_document(
    store: &PostgresStore,
    id: &str,
) -> Result<Option<WriteReceipt>, StoreError> {
    let mut tx = store.begin_write().await?;
    let Some(version) = lock_document(&mut tx, id).await? else {
        return Ok(None);
    };
    let latest = latest_migration(&mut tx).await?;
    let mut documents = WriteTx(&mut tx);
    let receipt = remove(&mut documents, latest.as_ref(), id, version).await?;
    tx.commit().await.map_err(store_error)?;
    Ok(Some(receipt))
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

    /// Last in the transaction, so the migration's row stays locked only until the commit.
    async fn add_counts(
        &mut self,
        migration_id: &str,
        delta: CountsDelta,
    ) -> Result<(), StoreError> {
        apply_delta(self.0, migration_id, delta).await
    }
}

/// [`Store::get_document`](crate::store::Store::get_document) on PostgreSQL.
pub(super) async fn get_document(
    store: &PostgresStore,
    id: &str,
) -> Result<Option<StoredDocument>, StoreError> {
    // REPEATABLE READ: the document and its embeddings from one snapshot.
    let mut tx = begin_read(store).await?;
    let row = sqlx::query(
        "SELECT id, text, metadata::text AS metadata, version FROM documents WHERE id = $1",
    )
    .bind(id)
    .fetch_optional(&mut *tx)
    .await
    .map_err(store_error)?;
    let Some(row) = row else { return Ok(None) };
    let mut document = decode_document(&row)?;
    document.embeddings = document_embeddings(&mut tx, id).await?;
    Ok(Some(document))
}

/// [`Store::list_documents`](crate::store::Store::list_documents) on PostgreSQL.
pub(super) async fn list_documents(
    store: &PostgresStore,
    after: Option<&str>,
    limit: u32,
) -> Result<Vec<StoredDocument>, StoreError> {
    let mut tx = begin_read(store).await?;
    let rows = sqlx::query(
        "SELECT id, text, metadata::text AS metadata, version FROM documents
         WHERE $1::text IS NULL OR id > $1 ORDER BY id LIMIT $2",
    )
    .bind(after)
    .bind(i64::from(limit))
    .fetch_all(&mut *tx)
    .await
    .map_err(store_error)?;
    let ids: Vec<String> = rows
        .iter()
        .map(|row| column(row, "id"))
        .collect::<Result<_, _>>()?;
    let embeddings = page_embeddings(&mut tx, &ids).await?;
    with_embeddings(&rows, embeddings)
}

/// [`Store::stored_documents`](crate::store::Store::stored_documents) on PostgreSQL: the
/// documents and their embeddings in one statement, so one snapshot without a transaction.
/// Every write reads this first (`Kept`), so it costs one round trip, not five.
pub(super) async fn stored_documents(
    store: &PostgresStore,
    ids: &[String],
) -> Result<Vec<StoredDocument>, StoreError> {
    if ids.is_empty() {
        return Ok(Vec::new());
    }
    let rows = sqlx::query(
        "SELECT d.id, d.text, d.metadata::text AS metadata, d.version,
                v.model, v.version AS vector_version, v.dimensions
         FROM documents d LEFT JOIN vectors v ON v.doc_id = d.id
         WHERE d.id = ANY($1)
         ORDER BY d.id, v.model",
    )
    .bind(ids)
    .fetch_all(&store.pool)
    .await
    .map_err(store_error)?;
    documents_from_join(
        &rows,
        |row| column(row, "id"),
        decode_document,
        decode_joined_vector_info,
    )
}

/// The documents of `rows`, each with its embeddings from `embeddings` (none if absent).
fn with_embeddings(
    rows: &[PgRow],
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

/// [`Store::hit_documents`](crate::store::Store::hit_documents) on PostgreSQL.
pub(super) async fn hit_documents(
    store: &PostgresStore,
    ids: &[String],
) -> Result<Vec<StoredDocument>, StoreError> {
    if ids.is_empty() {
        return Ok(Vec::new());
    }
    let rows = sqlx::query(
        "SELECT id, text, metadata::text AS metadata, version FROM documents WHERE id = ANY($1)",
    )
    .bind(ids)
    .fetch_all(&store.pool)
    .await
    .map_err(store_error)?;
    rows.iter().map(decode_document).collect()
}

/// A read-only transaction whose statements all see one snapshot. Begun to its end whoever
/// waits, as writes are (see `PostgresStore::begin_gated`), but not the request's answer: a
/// request that reads before it embeds is still answered 503 when its time runs out.
pub(super) async fn begin_read(store: &PostgresStore) -> Result<Tx, StoreError> {
    let pool = store.pool.clone();
    run_to_end_unanswered(async move {
        let mut tx = pool.begin().await.map_err(store_error)?;
        sqlx::query("SET TRANSACTION ISOLATION LEVEL REPEATABLE READ, READ ONLY")
            .execute(&mut *tx)
            .await
            .map_err(store_error)?;
        Ok(tx)
    })
    .await
}

/// The latest migration as the write path sees it, read inside the write's transaction once
/// it holds the gate, so no state transition is in flight and the row is the committed one.
async fn latest_migration(tx: &mut Tx) -> Result<Option<QueueView>, StoreError> {
    let row = sqlx::query(
        "SELECT id, target_model, state, rollback_window_ends_at, rollback_window_ends_at_nanos,
                total, processed, skipped, failed, truncated, tokens_embedded
         FROM migrations ORDER BY seq DESC LIMIT 1",
    )
    .fetch_optional(&mut **tx)
    .await
    .map_err(store_error)?;
    let Some(row) = row else { return Ok(None) };
    Ok(Some(QueueView::new(
        column(&row, "id")?,
        column(&row, "target_model")?,
        decode_state(&column::<String>(&row, "state")?)?,
        decode_counts(&row)?,
        decode_window_end(&row)?,
        Utc::now(),
    )))
}

/// Locks the existing documents among `ids` for update, in id order, so that concurrent
/// writes and batches take their row locks in one order and a delete in flight has finished
/// before the versions are read.
async fn lock_documents(tx: &mut Tx, ids: &[&str]) -> Result<(), StoreError> {
    sqlx::query("SELECT id FROM documents WHERE id = ANY($1) ORDER BY id FOR UPDATE")
        .bind(ids)
        .execute(&mut **tx)
        .await
        .map_err(store_error)?;
    Ok(())
}

/// Upserts the document one version up and stores its vectors at that version; returns it.
/// A new document continues from its tombstone's version (see `document_tombstones`).
async fn upsert_document(tx: &mut Tx, write: &DocumentWrite) -> Result<u64, StoreError> {
    let version: i64 = sqlx::query_scalar(
        "INSERT INTO documents (id, text, metadata, version)
         VALUES ($1, $2, $3::json,
                 COALESCE((SELECT version FROM document_tombstones WHERE id = $1), 0) + 1)
         ON CONFLICT (id) DO UPDATE
         SET text = excluded.text, metadata = excluded.metadata, version = documents.version + 1
         RETURNING version",
    )
    .bind(&write.id)
    .bind(&write.text)
    .bind(encode_metadata(&write.metadata)?)
    .fetch_one(&mut **tx)
    .await
    .map_err(store_error)?;
    let version = stored_u64(version, "document version")?;
    for (model, vector) in &write.vectors {
        upsert_vector(tx, model, &write.id, version, vector).await?;
    }
    Ok(version)
}

/// The document's version and text as this transaction, holding its row lock, finds them.
async fn stored_text(tx: &mut Tx, id: &str) -> Result<Option<(u64, String)>, StoreError> {
    let row = sqlx::query("SELECT version, text FROM documents WHERE id = $1")
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

/// Moves the kept vectors to `version` in place: the embedding is not rewritten.
async fn restamp_vectors(
    tx: &mut Tx,
    id: &str,
    kept: &Kept,
    version: u64,
) -> Result<usize, StoreError> {
    let moved = sqlx::query(
        "UPDATE vectors SET version = $1 WHERE doc_id = $2 AND version = $3 AND model = ANY($4)",
    )
    .bind(sql_int(version)?)
    .bind(id)
    .bind(sql_int(kept.version)?)
    .bind(&kept.models)
    .execute(&mut **tx)
    .await
    .map_err(store_error)?
    .rows_affected();
    usize::try_from(moved).map_err(|_| StoreError::Corrupt(format!("{moved} vectors moved")))
}

pub(super) async fn upsert_vector(
    tx: &mut Tx,
    model: &str,
    doc_id: &str,
    version: u64,
    vector: &[f32],
) -> Result<(), StoreError> {
    sqlx::query(
        "INSERT INTO vectors (model, doc_id, version, dimensions, embedding)
         VALUES ($1, $2, $3, $4, $5::real[]::vector)
         ON CONFLICT (model, doc_id) DO UPDATE
         SET version = excluded.version, dimensions = excluded.dimensions,
             embedding = excluded.embedding",
    )
    .bind(model)
    .bind(doc_id)
    .bind(sql_int(version)?)
    .bind(i32::try_from(vector.len()).map_err(|_| StoreError::Corrupt("vector too long".into()))?)
    .bind(vector)
    .execute(&mut **tx)
    .await
    .map_err(store_error)?;
    Ok(())
}

/// Locks a document for update and returns its version; `None` if it does not exist.
async fn lock_document(tx: &mut Tx, id: &str) -> Result<Option<u64>, StoreError> {
    let version: Option<i64> =
        sqlx::query_scalar("SELECT version FROM documents WHERE id = $1 FOR UPDATE")
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
        "INSERT INTO document_tombstones (id, version) VALUES ($1, $2)
         ON CONFLICT (id) DO UPDATE SET version = excluded.version",
    )
    .bind(id)
    .bind(sql_int(version)?)
    .execute(&mut **tx)
    .await
    .map_err(store_error)?;
    sqlx::query("DELETE FROM documents WHERE id = $1")
        .bind(id)
        .execute(&mut **tx)
        .await
        .map_err(store_error)?;
    Ok(())
}

/// One document's embeddings, sorted by model.
async fn document_embeddings(
    conn: &mut PgConnection,
    id: &str,
) -> Result<Vec<VectorInfo>, StoreError> {
    let rows = sqlx::query(
        "SELECT model, version, dimensions FROM vectors WHERE doc_id = $1 ORDER BY model",
    )
    .bind(id)
    .fetch_all(conn)
    .await
    .map_err(store_error)?;
    rows.iter().map(decode_vector_info).collect()
}

/// The embeddings of the documents `ids` (a `list_documents` page) in one query, grouped by
/// document and sorted by model.
async fn page_embeddings(
    conn: &mut PgConnection,
    ids: &[String],
) -> Result<HashMap<String, Vec<VectorInfo>>, StoreError> {
    let rows = sqlx::query(
        "SELECT doc_id, model, version, dimensions FROM vectors
         WHERE doc_id = ANY($1) ORDER BY doc_id, model",
    )
    .bind(ids)
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
