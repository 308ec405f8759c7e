//! Shadow samples in SQLite (`GET /v1/migrations/{id}/comparison`): a batch of samples is
//! recorded in one transaction, which counts them on the migration's row (the cutover gate's
//! evidence) and prunes what it added beyond the bounds of `domain::comparison` — the newest
//! `SAMPLES_KEPT` figures and the `WORST_KEPT` lowest overlaps per migration — so the tables
//! never grow with the traffic.

use sqlx::sqlite::SqliteRow;

use super::codec::{column, decode_shadow, sql_int, store_error, stored_u64};
use super::{SqliteStore, Tx};
use crate::domain::ShadowEvidence;
use crate::domain::comparison::{
    ComparisonData, SAMPLES_KEPT, SampleFigures, ShadowSample, WORST_KEPT, WorstQuery, lowest,
};
use crate::store::StoreError;

/// [`Store::record_shadow_samples`](crate::store::Store::record_shadow_samples) on SQLite.
pub(super) async fn record_shadow_samples(
    store: &SqliteStore,
    migration_id: &str,
    samples: &[ShadowSample],
    dropped: u64,
) -> Result<ShadowEvidence, StoreError> {
    store
        .write(async {
            let mut tx = store.begin_write().await?;
            insert_figures(&mut tx, migration_id, samples).await?;
            insert_worst(&mut tx, migration_id, samples).await?;
            add_drops(&mut tx, migration_id, dropped).await?;
            let evidence = count_samples(&mut tx, migration_id, samples).await?;
            tx.commit().await.map_err(store_error)?;
            Ok(evidence)
        })
        .await
}

async fn insert_figures(
    tx: &mut Tx,
    migration_id: &str,
    samples: &[ShadowSample],
) -> Result<(), StoreError> {
    for sample in samples {
        sqlx::query(
            "INSERT INTO shadow_samples (migration_id, overlap, source_ms, target_ms)
             VALUES (?1, ?2, ?3, ?4)",
        )
        .bind(migration_id)
        .bind(sample.overlap)
        .bind(sample.source_ms)
        .bind(sample.target_ms)
        .execute(&mut **tx)
        .await
        .map_err(store_error)?;
    }
    sqlx::query(
        "DELETE FROM shadow_samples WHERE migration_id = ?1 AND seq <= (
             SELECT seq FROM shadow_samples WHERE migration_id = ?1
             ORDER BY seq DESC LIMIT 1 OFFSET ?2)",
    )
    .bind(migration_id)
    .bind(sql_int(SAMPLES_KEPT)?)
    .execute(&mut **tx)
    .await
    .map_err(store_error)?;
    Ok(())
}

/// Adds the batch's lowest overlaps to the migration's worst queries, then keeps the lowest
/// `WORST_KEPT` of them (the newer among equals).
async fn insert_worst(
    tx: &mut Tx,
    migration_id: &str,
    samples: &[ShadowSample],
) -> Result<(), StoreError> {
    for sample in lowest(samples, WORST_KEPT) {
        sqlx::query(
            "INSERT INTO shadow_worst (migration_id, overlap, text, source_hits, target_hits)
             VALUES (?1, ?2, ?3, ?4, ?5)",
        )
        .bind(migration_id)
        .bind(sample.overlap)
        .bind(&sample.text)
        .bind(encode_ids(&sample.source_hits)?)
        .bind(encode_ids(&sample.target_hits)?)
        .execute(&mut **tx)
        .await
        .map_err(store_error)?;
    }
    sqlx::query(
        "DELETE FROM shadow_worst WHERE migration_id = ?1 AND seq NOT IN (
             SELECT seq FROM shadow_worst WHERE migration_id = ?1
             ORDER BY overlap, seq DESC LIMIT ?2)",
    )
    .bind(migration_id)
    .bind(sql_int(WORST_KEPT)?)
    .execute(&mut **tx)
    .await
    .map_err(store_error)?;
    Ok(())
}

async fn add_drops(tx: &mut Tx, migration_id: &str, dropped: u64) -> Result<(), StoreError> {
    if dropped == 0 {
        return Ok(());
    }
    sqlx::query(
        "INSERT INTO shadow_drops (migration_id, dropped) VALUES (?1, ?2)
         ON CONFLICT (migration_id) DO UPDATE SET dropped = shadow_drops.dropped + excluded.dropped",
    )
    .bind(migration_id)
    .bind(sql_int(dropped)?)
    .execute(&mut **tx)
    .await
    .map_err(store_error)?;
    Ok(())
}

/// Counts `samples` on the migration's row (the cutover gate's evidence) and returns the
/// evidence it now holds; `Conflict` for an unknown migration (whose samples the foreign keys
/// refuse before this, in practice).
async fn count_samples(
    tx: &mut Tx,
    migration_id: &str,
    samples: &[ShadowSample],
) -> Result<ShadowEvidence, StoreError> {
    let overlap_sum: f64 = samples.iter().map(|s| s.overlap).sum();
    let row = sqlx::query(
        "UPDATE migrations SET shadow_samples = shadow_samples + ?2,
             shadow_overlap_sum = shadow_overlap_sum + ?3
         WHERE id = ?1 RETURNING shadow_samples, shadow_overlap_sum",
    )
    .bind(migration_id)
    .bind(sql_int(samples.len())?)
    .bind(overlap_sum)
    .fetch_optional(&mut **tx)
    .await
    .map_err(store_error)?;
    match row {
        Some(row) => decode_shadow(&row),
        None => Err(StoreError::Conflict(format!("no migration {migration_id}"))),
    }
}

/// [`Store::comparison`](crate::store::Store::comparison) on SQLite, read from one snapshot.
pub(super) async fn comparison(
    store: &SqliteStore,
    migration_id: &str,
) -> Result<ComparisonData, StoreError> {
    let mut tx = store.begin_read().await?;
    let figures = sqlx::query(
        "SELECT overlap, source_ms, target_ms FROM shadow_samples WHERE migration_id = ?1
         ORDER BY seq DESC LIMIT ?2",
    )
    .bind(migration_id)
    .bind(sql_int(SAMPLES_KEPT)?)
    .fetch_all(&mut *tx)
    .await
    .map_err(store_error)?;
    let worst = sqlx::query(
        "SELECT overlap, text, source_hits, target_hits FROM shadow_worst WHERE migration_id = ?1
         ORDER BY overlap, seq DESC LIMIT ?2",
    )
    .bind(migration_id)
    .bind(sql_int(WORST_KEPT)?)
    .fetch_all(&mut *tx)
    .await
    .map_err(store_error)?;
    let dropped: Option<i64> =
        sqlx::query_scalar("SELECT dropped FROM shadow_drops WHERE migration_id = ?1")
            .bind(migration_id)
            .fetch_optional(&mut *tx)
            .await
            .map_err(store_error)?;
    let evidence =
        sqlx::query("SELECT shadow_samples, shadow_overlap_sum FROM migrations WHERE id = ?1")
            .bind(migration_id)
            .fetch_optional(&mut *tx)
            .await
            .map_err(store_error)?;
    Ok(ComparisonData {
        evidence: evidence
            .as_ref()
            .map(decode_shadow)
            .transpose()?
            .unwrap_or_default(),
        figures: figures
            .iter()
            .map(decode_figures)
            .collect::<Result<_, _>>()?,
        dropped: stored_u64(dropped.unwrap_or(0), "shadow drops")?,
        worst: worst.iter().map(decode_worst).collect::<Result<_, _>>()?,
    })
}

fn decode_figures(row: &SqliteRow) -> Result<SampleFigures, StoreError> {
    Ok(SampleFigures {
        overlap: column(row, "overlap")?,
        source_ms: column(row, "source_ms")?,
        target_ms: column(row, "target_ms")?,
    })
}

fn decode_worst(row: &SqliteRow) -> Result<WorstQuery, StoreError> {
    Ok(WorstQuery {
        text: column(row, "text")?,
        overlap: column(row, "overlap")?,
        source_hits: decode_ids(&column::<String>(row, "source_hits")?)?,
        target_hits: decode_ids(&column::<String>(row, "target_hits")?)?,
    })
}

/// Hit ids as a JSON array of strings.
fn encode_ids(ids: &[String]) -> Result<String, StoreError> {
    serde_json::to_string(ids).map_err(|e| StoreError::Corrupt(format!("hit ids: {e}")))
}

fn decode_ids(json: &str) -> Result<Vec<String>, StoreError> {
    serde_json::from_str(json).map_err(|e| StoreError::Corrupt(format!("hit ids: {e}")))
}
