//! Shadow samples in PostgreSQL (`GET /v1/migrations/{id}/comparison`), shared by every
//! replica: each replica records its batches of samples in transactions of their own, which
//! count them on the migration's row (the cutover gate's evidence, added to, never set, so
//! replicas' counts add up) and prune beyond the bounds of `domain::comparison` — the newest
//! `SAMPLES_KEPT` figures and the `WORST_KEPT` lowest overlaps per migration. Two replicas
//! recording at once may each prune without seeing the other's rows, leaving a few rows over
//! a bound until the next batch; reads apply the bounds themselves, so they never show it. No
//! gate lock: the samples touch neither documents nor the migration's state, and the row's
//! lock is taken last, for the commit only. The `BEGIN` runs to its end whoever waits for it,
//! as every transaction of this backend does (see `PostgresStore::begin_gated`).

use sqlx::postgres::PgRow;

use super::codec::{column, decode_shadow, sql_int, store_error, stored_u64};
use super::documents::begin_read;
use super::{PostgresStore, Tx};
use crate::domain::ShadowEvidence;
use crate::domain::comparison::{
    ComparisonData, SAMPLES_KEPT, SampleFigures, ShadowSample, WORST_KEPT, WorstQuery, lowest,
};
use crate::run_to_end::run_to_end;
use crate::store::StoreError;

/// [`Store::record_shadow_samples`](crate::store::Store::record_shadow_samples) on PostgreSQL.
pub(super) async fn record_shadow_samples(
    store: &PostgresStore,
    migration_id: &str,
    samples: &[ShadowSample],
    dropped: u64,
) -> Result<ShadowEvidence, StoreError> {
    let pool = store.pool.clone();
    let mut tx = run_to_end(async move { pool.begin().await.map_err(store_error) }).await?;
    insert_figures(&mut tx, migration_id, samples).await?;
    insert_worst(&mut tx, migration_id, samples).await?;
    add_drops(&mut tx, migration_id, dropped).await?;
    // Last, so the migration's row is locked only for the commit.
    let evidence = count_samples(&mut tx, migration_id, samples).await?;
    tx.commit().await.map_err(store_error)?;
    Ok(evidence)
}

/// Inserts every sample's figures in one statement, then prunes all but the newest.
async fn insert_figures(
    tx: &mut Tx,
    migration_id: &str,
    samples: &[ShadowSample],
) -> Result<(), StoreError> {
    let column_of = |field: fn(&ShadowSample) -> f64| samples.iter().map(field).collect();
    let overlaps: Vec<f64> = column_of(|s| s.overlap);
    let source_ms: Vec<f64> = column_of(|s| s.source_ms);
    let target_ms: Vec<f64> = column_of(|s| s.target_ms);
    sqlx::query(
        "INSERT INTO shadow_samples (migration_id, overlap, source_ms, target_ms)
         SELECT $1, * FROM UNNEST($2::float8[], $3::float8[], $4::float8[])",
    )
    .bind(migration_id)
    .bind(overlaps)
    .bind(source_ms)
    .bind(target_ms)
    .execute(&mut **tx)
    .await
    .map_err(store_error)?;
    sqlx::query(
        "DELETE FROM shadow_samples WHERE migration_id = $1 AND seq <= (
             SELECT seq FROM shadow_samples WHERE migration_id = $1
             ORDER BY seq DESC LIMIT 1 OFFSET $2)",
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
             VALUES ($1, $2, $3, $4, $5)",
        )
        .bind(migration_id)
        .bind(sample.overlap)
        .bind(&sample.text)
        .bind(&sample.source_hits)
        .bind(&sample.target_hits)
        .execute(&mut **tx)
        .await
        .map_err(store_error)?;
    }
    sqlx::query(
        "DELETE FROM shadow_worst WHERE migration_id = $1 AND seq NOT IN (
             SELECT seq FROM shadow_worst WHERE migration_id = $1
             ORDER BY overlap, seq DESC LIMIT $2)",
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
        "INSERT INTO shadow_drops (migration_id, dropped) VALUES ($1, $2)
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
        "UPDATE migrations SET shadow_samples = shadow_samples + $2,
             shadow_overlap_sum = shadow_overlap_sum + $3
         WHERE id = $1 RETURNING shadow_samples, shadow_overlap_sum",
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

/// [`Store::comparison`](crate::store::Store::comparison) on PostgreSQL.
pub(super) async fn comparison(
    store: &PostgresStore,
    migration_id: &str,
) -> Result<ComparisonData, StoreError> {
    // One snapshot: a flush committing between these reads would count samples whose figures
    // were not read.
    let mut tx = begin_read(store).await?;
    let figures = sqlx::query(
        "SELECT overlap, source_ms, target_ms FROM shadow_samples WHERE migration_id = $1
         ORDER BY seq DESC LIMIT $2",
    )
    .bind(migration_id)
    .bind(sql_int(SAMPLES_KEPT)?)
    .fetch_all(&mut *tx)
    .await
    .map_err(store_error)?;
    let worst = sqlx::query(
        "SELECT overlap, text, source_hits, target_hits FROM shadow_worst WHERE migration_id = $1
         ORDER BY overlap, seq DESC LIMIT $2",
    )
    .bind(migration_id)
    .bind(sql_int(WORST_KEPT)?)
    .fetch_all(&mut *tx)
    .await
    .map_err(store_error)?;
    let dropped: Option<i64> =
        sqlx::query_scalar("SELECT dropped FROM shadow_drops WHERE migration_id = $1")
            .bind(migration_id)
            .fetch_optional(&mut *tx)
            .await
            .map_err(store_error)?;
    let evidence =
        sqlx::query("SELECT shadow_samples, shadow_overlap_sum FROM migrations WHERE id = $1")
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

fn decode_figures(row: &PgRow) -> Result<SampleFigures, StoreError> {
    Ok(SampleFigures {
        overlap: column(row, "overlap")?,
        source_ms: column(row, "source_ms")?,
        target_ms: column(row, "target_ms")?,
    })
}

fn decode_worst(row: &PgRow) -> Result<WorstQuery, StoreError> {
    Ok(WorstQuery {
        text: column(row, "text")?,
        overlap: column(row, "overlap")?,
        source_hits: column(row, "source_hits")?,
        target_hits: column(row, "target_hits")?,
    })
}
