//! How values and errors cross the boundary with PostgreSQL: integers, times split into
//! microseconds and nanoseconds, vectors checked for what pgvector stores, rows decoded into
//! the store's types, and sqlx errors classified by SQLSTATE.

use std::fmt::Display;

use chrono::{DateTime, Duration, Utc};
use sqlx::postgres::PgRow;
use sqlx::types::Json;
use sqlx::{Postgres, Row};

use crate::domain::{
    BackfillConfig, Counts, Evaluation, GateOverride, Migration, MigrationState, ShadowEvidence,
    SourceCleanup,
};
use crate::store::{
    ClaimedDocument, ReplicaProgress, Skip, StoreError, StoredDocument, StoredMetadata,
    StoredVector, VectorInfo,
};

/// SQLSTATE `disk_full`.
const DISK_FULL: &str = "53100";
/// SQLSTATEs of a transaction that lost a race with another one: `serialization_failure`,
/// `deadlock_detected`, `lock_not_available`. Nothing was written and a retry may succeed,
/// which is what `Conflict` tells the write path (it re-routes and retries).
const LOST_RACE: [&str; 3] = ["40001", "40P01", "55P03"];

/// Classifies an error of the database: out of space is `Full`, a lost race `Conflict`, a row
/// that does not decode `Corrupt`; anything else means the database could not do its job
/// (connection, pool, server) and is `Unavailable`.
pub(super) fn store_error(error: sqlx::Error) -> StoreError {
    if let sqlx::Error::Database(database) = &error {
        match database.code().as_deref() {
            Some(DISK_FULL) => return StoreError::Full(error.to_string()),
            Some(code) if LOST_RACE.contains(&code) => {
                return StoreError::Conflict(error.to_string());
            }
            _ => {}
        }
    }
    match error {
        sqlx::Error::ColumnDecode { .. }
        | sqlx::Error::Decode(_)
        | sqlx::Error::ColumnNotFound(_)
        | sqlx::Error::ColumnIndexOutOfBounds { .. }
        | sqlx::Error::TypeNotFound { .. } => StoreError::Corrupt(error.to_string()),
        other => StoreError::Unavailable(other.to_string()),
    }
}

/// The unique index or constraint a statement violated, if that is how it failed.
pub(super) fn violated_unique(error: &sqlx::Error) -> Option<&str> {
    match error {
        sqlx::Error::Database(database) if database.is_unique_violation() => database.constraint(),
        _ => None,
    }
}

pub(super) fn column<'r, T>(row: &'r PgRow, name: &str) -> Result<T, StoreError>
where
    T: sqlx::Decode<'r, Postgres> + sqlx::Type<Postgres>,
{
    row.try_get(name).map_err(store_error)
}

/// Counts and versions are `BIGINT`, far below its limit; a value beyond it can only come
/// from corrupted in-memory state.
pub(super) fn sql_int<T: TryInto<i64> + Copy + Display>(value: T) -> Result<i64, StoreError> {
    value
        .try_into()
        .map_err(|_| StoreError::Corrupt(format!("{value} exceeds PostgreSQL's BIGINT range")))
}

pub(super) use crate::store::stored::stored_u64;

fn stored_usize(value: i32) -> Result<usize, StoreError> {
    usize::try_from(value).map_err(|_| StoreError::Corrupt(format!("bad dimensions: {value}")))
}

/// A time as `TIMESTAMPTZ` keeps it (whole microseconds, rounded down) and the nanoseconds
/// below the microsecond, for the `*_nanos` column beside it.
pub(super) fn split_time(time: DateTime<Utc>) -> (DateTime<Utc>, i16) {
    let below = time.timestamp_subsec_nanos() % 1_000;
    let micros = time - Duration::nanoseconds(i64::from(below));
    // `below` < 1000, so it fits.
    (micros, below as i16)
}

/// [`split_time`] of an optional time; no time stores 0 nanoseconds.
pub(super) fn split_optional_time(time: Option<DateTime<Utc>>) -> (Option<DateTime<Utc>>, i16) {
    match time.map(split_time) {
        Some((micros, nanos)) => (Some(micros), nanos),
        None => (None, 0),
    }
}

/// The time stored in column `name` and its `name_nanos` companion.
fn decode_optional_time(row: &PgRow, name: &str) -> Result<Option<DateTime<Utc>>, StoreError> {
    let micros: Option<DateTime<Utc>> = column(row, name)?;
    let nanos: i16 = column(row, &format!("{name}_nanos"))?;
    if !(0..1_000).contains(&nanos) {
        return Err(StoreError::Corrupt(format!(
            "{name}_nanos out of range: {nanos}"
        )));
    }
    Ok(micros.map(|t| t + Duration::nanoseconds(i64::from(nanos))))
}

pub(super) fn decode_time(row: &PgRow, name: &str) -> Result<DateTime<Utc>, StoreError> {
    decode_optional_time(row, name)?.ok_or_else(|| StoreError::Corrupt(format!("{name} is null")))
}

/// pgvector stores finite values only and at least one dimension: a vector it would refuse is
/// reported before the statement, naming the model. (Embedders normalise their vectors, so
/// none should ever reach here.)
pub(super) fn check_vector(model: &str, vector: &[f32]) -> Result<(), StoreError> {
    if vector.is_empty() {
        return Err(StoreError::Corrupt(format!("an empty {model} vector")));
    }
    if vector.iter().any(|x| !x.is_finite()) {
        return Err(StoreError::Corrupt(format!(
            "a {model} vector holds NaN or infinity, which pgvector does not store"
        )));
    }
    Ok(())
}

/// A migration's gate override as the JSON its column keeps, or NULL.
pub(super) fn encode_gate_override(m: &Migration) -> Result<Option<String>, StoreError> {
    m.gate_override
        .as_ref()
        .map(serde_json::to_string)
        .transpose()
        .map_err(|e| StoreError::Corrupt(format!("migration gate override: {e}")))
}

pub(super) fn decode_state(name: &str) -> Result<MigrationState, StoreError> {
    MigrationState::parse(name)
        .ok_or_else(|| StoreError::Corrupt(format!("unknown migration state {name:?}")))
}

/// The vector columns of a documents ⟕ vectors row (`model`, `vector_version`,
/// `dimensions`): `None` for a document without vectors.
pub(super) fn decode_joined_vector_info(row: &PgRow) -> Result<Option<VectorInfo>, StoreError> {
    let Some(model) = column::<Option<String>>(row, "model")? else {
        return Ok(None);
    };
    Ok(Some(VectorInfo {
        model,
        version: stored_u64(column(row, "vector_version")?, "vector version")?,
        dimensions: stored_usize(column(row, "dimensions")?)?,
    }))
}

pub(super) fn decode_vector_info(row: &PgRow) -> Result<VectorInfo, StoreError> {
    Ok(VectorInfo {
        model: column(row, "model")?,
        version: stored_u64(column(row, "version")?, "vector version")?,
        dimensions: stored_usize(column(row, "dimensions")?)?,
    })
}

/// A row of `SELECT doc_id, version, embedding::real[] AS embedding`.
pub(super) fn decode_vector(row: &PgRow) -> Result<StoredVector, StoreError> {
    Ok((
        column(row, "doc_id")?,
        stored_u64(column(row, "version")?, "vector version")?,
        column(row, "embedding")?,
    ))
}

/// A row of `SELECT id, version, metadata::text AS metadata`.
pub(super) fn decode_metadata(row: &PgRow) -> Result<StoredMetadata, StoreError> {
    let metadata: String = column(row, "metadata")?;
    Ok((
        column(row, "id")?,
        stored_u64(column(row, "version")?, "document version")?,
        serde_json::from_str(&metadata)
            .map_err(|e| StoreError::Corrupt(format!("metadata: {e}")))?,
    ))
}

/// Metadata as the JSON text the `json` column keeps verbatim, so numbers come back digit
/// for digit (`jsonb` would normalise them).
pub(super) fn encode_metadata(metadata: &serde_json::Value) -> Result<String, StoreError> {
    serde_json::to_string(metadata).map_err(|e| StoreError::Corrupt(format!("metadata: {e}")))
}

/// A document row without its embeddings, which come from a second query.
pub(super) fn decode_document(row: &PgRow) -> Result<StoredDocument, StoreError> {
    let (id, version, metadata) = decode_metadata(row)?;
    Ok(StoredDocument {
        id,
        text: column(row, "text")?,
        metadata,
        version,
        embeddings: Vec::new(),
    })
}

pub(super) fn decode_claimed(row: &PgRow) -> Result<ClaimedDocument, StoreError> {
    Ok(ClaimedDocument {
        id: column(row, "id")?,
        text: column(row, "text")?,
        version: stored_u64(column(row, "version")?, "document version")?,
    })
}

pub(super) fn decode_replica(row: &PgRow) -> Result<ReplicaProgress, StoreError> {
    let in_flight: i64 = column(row, "in_flight")?;
    Ok(ReplicaProgress {
        id: column(row, "replica_id")?,
        in_flight_batches: u32::try_from(in_flight)
            .map_err(|_| StoreError::Corrupt(format!("{in_flight} batches in flight")))?,
        processed: stored_u64(column(row, "processed")?, "replica processed")?,
    })
}

pub(super) fn decode_skip(row: &PgRow) -> Result<Skip, StoreError> {
    Ok(Skip {
        document_id: column(row, "doc_id")?,
        reason: column(row, "reason")?,
        at: column(row, "at")?,
    })
}

pub(super) fn decode_migration(row: &PgRow) -> Result<Migration, StoreError> {
    Ok(Migration {
        id: column(row, "id")?,
        source_model: column(row, "source_model")?,
        target_model: column(row, "target_model")?,
        config: column::<Json<BackfillConfig>>(row, "config")?.0,
        state: decode_state(&column::<String>(row, "state")?)?,
        created_at: decode_time(row, "created_at")?,
        started_at: decode_optional_time(row, "started_at")?,
        completed_at: decode_optional_time(row, "completed_at")?,
        rollback_window_ends_at: decode_optional_time(row, "rollback_window_ends_at")?,
        error: column(row, "error")?,
        pause_reason: column(row, "pause_reason")?,
        counts: decode_counts(row)?,
        evaluation: column::<Option<Json<Evaluation>>>(row, "last_evaluation")?.map(|json| json.0),
        gate_override: column::<Option<Json<GateOverride>>>(row, "gate_override")?.map(|j| j.0),
        shadow: decode_shadow(row)?,
        cleanup: SourceCleanup {
            deleted: stored_u64(column(row, "source_vectors_deleted")?, "deleted vectors")?,
            done_at: decode_optional_time(row, "cleanup_done_at")?,
        },
    })
}

/// The shadow evidence counted on a migration's row.
pub(super) fn decode_shadow(row: &PgRow) -> Result<ShadowEvidence, StoreError> {
    let samples = stored_u64(column(row, "shadow_samples")?, "shadow samples")?;
    let overlap_sum: f64 = column(row, "shadow_overlap_sum")?;
    Ok(ShadowEvidence::from_sum(samples, overlap_sum))
}

pub(super) fn decode_counts(row: &PgRow) -> Result<Counts, StoreError> {
    let count = |name: &str| stored_u64(column(row, name)?, name);
    Ok(Counts {
        total: count("total")?,
        processed: count("processed")?,
        skipped: count("skipped")?,
        failed: count("failed")?,
        truncated: count("truncated")?,
        tokens_embedded: count("tokens_embedded")?,
    })
}

/// The `rollback_window_ends_at` of a migration row, for the write path's view of it.
pub(super) fn decode_window_end(row: &PgRow) -> Result<Option<DateTime<Utc>>, StoreError> {
    decode_optional_time(row, "rollback_window_ends_at")
}

#[cfg(test)]
mod tests {
    use chrono::TimeZone;

    use super::*;

    #[test]
    fn a_split_time_joins_back_exactly_also_before_the_epoch() {
        let times = [
            Utc.timestamp_opt(1_700_000_000, 123_456_789).unwrap(),
            Utc.timestamp_opt(-86_400 * 365, 1).unwrap(),
            Utc.timestamp_opt(0, 999_999_999).unwrap(),
        ];
        for time in times {
            let (micros, nanos) = split_time(time);
            assert_eq!(micros.timestamp_subsec_nanos() % 1_000, 0);
            assert!((0..1_000).contains(&nanos));
            assert_eq!(micros + Duration::nanoseconds(i64::from(nanos)), time);
        }
    }

    #[test]
    fn vectors_pgvector_refuses_are_reported_before_the_statement() {
        assert!(check_vector("m", &[0.0, -0.0, f32::MAX]).is_ok());
        for bad in [vec![], vec![f32::NAN], vec![1.0, f32::INFINITY]] {
            assert!(matches!(
                check_vector("m", &bad),
                Err(StoreError::Corrupt(_))
            ));
        }
    }
}
