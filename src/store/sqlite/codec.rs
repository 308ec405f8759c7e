//! How values and errors cross the boundary with SQLite: integers, times, JSON, vector
//! blobs and rows decoded into the store's types, and sqlx errors classified.

use std::fmt::Display;
use std::path::Path;

use chrono::{DateTime, SecondsFormat, Utc};
use serde_json::Value;
use sqlx::sqlite::SqliteRow;
use sqlx::{Row, Sqlite};

use super::bulk;

use crate::domain::{Counts, Migration, MigrationState, ShadowEvidence, SourceCleanup};
use crate::store::{
    ClaimedDocument, ReplicaProgress, Skip, StoreError, StoredDocument, StoredMetadata,
    StoredVector, VectorInfo,
};

/// Decoding failures mean the stored data is not what this code wrote; anything else means the
/// database could not do its job.
/// SQLite's primary result codes for a full disk and for a failing one.
const SQLITE_FULL: i32 = 13;
const SQLITE_IOERR: i32 = 10;

pub(super) fn store_error(error: sqlx::Error) -> StoreError {
    if is_disk_failure(&error) {
        return StoreError::Full(error.to_string());
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

/// The bytes an unprivileged writer may still use on the file system holding `dir`; `None`
/// where the system cannot tell.
pub(super) fn free_bytes(dir: &Path) -> Option<u64> {
    use std::os::unix::ffi::OsStrExt;
    let path = std::ffi::CString::new(dir.as_os_str().as_bytes()).ok()?;
    let mut stat = std::mem::MaybeUninit::<libc::statvfs>::uninit();
    // SAFETY: `path` is NUL-terminated and outlives the call; statvfs only writes `stat`.
    let failed = unsafe { libc::statvfs(path.as_ptr(), stat.as_mut_ptr()) } != 0;
    if failed {
        return None;
    }
    // SAFETY: statvfs succeeded, so it filled `stat`.
    let stat = unsafe { stat.assume_init() };
    Some(stat.f_bavail.saturating_mul(stat.f_frsize))
}

/// Whether SQLite failed for want of disk space or a working disk (an extended result code
/// keeps its primary code in the low byte).
fn is_disk_failure(error: &sqlx::Error) -> bool {
    let sqlx::Error::Database(database) = error else {
        return false;
    };
    let primary = database
        .code()
        .and_then(|code| code.parse::<i32>().ok())
        .map(|code| code & 0xff);
    matches!(primary, Some(SQLITE_FULL | SQLITE_IOERR))
}

pub(super) fn column<'r, T>(row: &'r SqliteRow, name: &str) -> Result<T, StoreError>
where
    T: sqlx::Decode<'r, Sqlite> + sqlx::Type<Sqlite>,
{
    row.try_get(name).map_err(store_error)
}

/// SQLite integers are signed 64-bit; counts and versions are far below the limit, so a value
/// beyond it can only come from corrupted in-memory state.
pub(super) fn sql_int<T: TryInto<i64> + Copy + Display>(value: T) -> Result<i64, StoreError> {
    value
        .try_into()
        .map_err(|_| StoreError::Corrupt(format!("{value} exceeds SQLite's integer range")))
}

pub(super) use crate::store::stored::stored_u64;

fn stored_usize(value: i64) -> Result<usize, StoreError> {
    usize::try_from(value).map_err(|_| StoreError::Corrupt(format!("bad dimensions: {value}")))
}

pub(super) fn encode_time(time: DateTime<Utc>) -> String {
    time.to_rfc3339_opts(SecondsFormat::Nanos, true)
}

fn decode_time(text: &str) -> Result<DateTime<Utc>, StoreError> {
    DateTime::parse_from_rfc3339(text)
        .map(|t| t.with_timezone(&Utc))
        .map_err(|e| StoreError::Corrupt(format!("bad timestamp {text:?}: {e}")))
}

pub(super) fn decode_optional_time(
    row: &SqliteRow,
    name: &str,
) -> Result<Option<DateTime<Utc>>, StoreError> {
    column::<Option<String>>(row, name)?
        .as_deref()
        .map(decode_time)
        .transpose()
}

pub(super) fn encode_json(value: &Value) -> Result<String, StoreError> {
    serde_json::to_string(value).map_err(|e| StoreError::Corrupt(format!("metadata: {e}")))
}

pub(super) fn encode_config(m: &Migration) -> Result<String, StoreError> {
    serde_json::to_string(&m.config)
        .map_err(|e| StoreError::Corrupt(format!("migration config: {e}")))
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

pub(super) fn encode_vector(vector: &[f32]) -> Vec<u8> {
    vector.iter().flat_map(|x| x.to_le_bytes()).collect()
}

fn decode_vector(data: &[u8], dimensions: usize) -> Result<Vec<f32>, StoreError> {
    if data.len() != dimensions * 4 {
        return Err(StoreError::Corrupt(format!(
            "vector blob of {} bytes for {dimensions} dimensions",
            data.len()
        )));
    }
    Ok(data
        .chunks_exact(4)
        .map(|b| f32::from_le_bytes([b[0], b[1], b[2], b[3]]))
        .collect())
}

/// The vector columns of a documents ⟕ vectors row (`model`, `vector_version`,
/// `dimensions`): `None` for a document without vectors.
pub(super) fn decode_joined_vector_info(row: &SqliteRow) -> Result<Option<VectorInfo>, StoreError> {
    let Some(model) = column::<Option<String>>(row, "model")? else {
        return Ok(None);
    };
    Ok(Some(VectorInfo {
        model,
        version: stored_u64(column(row, "vector_version")?, "vector version")?,
        dimensions: stored_usize(column(row, "dimensions")?)?,
    }))
}

pub(super) fn decode_vector_info(row: &SqliteRow) -> Result<VectorInfo, StoreError> {
    Ok(VectorInfo {
        model: column(row, "model")?,
        version: stored_u64(column(row, "version")?, "vector version")?,
        dimensions: stored_usize(column(row, "dimensions")?)?,
    })
}

/// A row of `SELECT doc_id, version, dimensions, data`.
pub(super) fn decode_bulk_vector(row: &rusqlite::Row<'_>) -> Result<StoredVector, StoreError> {
    let dimensions = stored_usize(bulk::column(row, 2)?)?;
    let data = row
        .get_ref(3)
        .and_then(|value| Ok(value.as_blob()?))
        .map_err(|e| StoreError::Corrupt(format!("column data: {e}")))?;
    Ok((
        bulk::column(row, 0)?,
        stored_u64(bulk::column(row, 1)?, "vector version")?,
        decode_vector(data, dimensions)?,
    ))
}

/// A row of `SELECT id, version, metadata`.
pub(super) fn decode_bulk_metadata(row: &rusqlite::Row<'_>) -> Result<StoredMetadata, StoreError> {
    let metadata: String = bulk::column(row, 2)?;
    Ok((
        bulk::column(row, 0)?,
        stored_u64(bulk::column(row, 1)?, "document version")?,
        parse_metadata(&metadata)?,
    ))
}

/// A document row without its embeddings, which come from a second query.
pub(super) fn decode_document(row: &SqliteRow) -> Result<StoredDocument, StoreError> {
    Ok(StoredDocument {
        id: column(row, "id")?,
        text: column(row, "text")?,
        metadata: decode_metadata(row)?,
        version: stored_u64(column(row, "version")?, "document version")?,
        embeddings: Vec::new(),
    })
}

/// The `metadata` column of a document row, as the JSON it was written as.
fn decode_metadata(row: &SqliteRow) -> Result<serde_json::Value, StoreError> {
    parse_metadata(&column::<String>(row, "metadata")?)
}

pub(super) fn parse_metadata(metadata: &str) -> Result<serde_json::Value, StoreError> {
    serde_json::from_str(metadata).map_err(|e| StoreError::Corrupt(format!("metadata: {e}")))
}

pub(super) fn decode_claimed(row: &SqliteRow) -> Result<ClaimedDocument, StoreError> {
    Ok(ClaimedDocument {
        id: column(row, "id")?,
        text: column(row, "text")?,
        version: stored_u64(column(row, "version")?, "document version")?,
    })
}

pub(super) fn decode_replica(row: &SqliteRow) -> Result<ReplicaProgress, StoreError> {
    let in_flight: i64 = column(row, "in_flight")?;
    Ok(ReplicaProgress {
        id: column(row, "replica_id")?,
        in_flight_batches: u32::try_from(in_flight)
            .map_err(|_| StoreError::Corrupt(format!("{in_flight} batches in flight")))?,
        processed: stored_u64(column(row, "processed")?, "replica processed")?,
    })
}

pub(super) fn decode_skip(row: &SqliteRow) -> Result<Skip, StoreError> {
    Ok(Skip {
        document_id: column(row, "doc_id")?,
        reason: column(row, "reason")?,
        at: decode_time(&column::<String>(row, "at")?)?,
    })
}

pub(super) fn decode_migration(row: &SqliteRow) -> Result<Migration, StoreError> {
    let config: String = column(row, "config")?;
    Ok(Migration {
        id: column(row, "id")?,
        source_model: column(row, "source_model")?,
        target_model: column(row, "target_model")?,
        config: serde_json::from_str(&config)
            .map_err(|e| StoreError::Corrupt(format!("migration config: {e}")))?,
        state: decode_state(&column::<String>(row, "state")?)?,
        created_at: decode_time(&column::<String>(row, "created_at")?)?,
        started_at: decode_optional_time(row, "started_at")?,
        completed_at: decode_optional_time(row, "completed_at")?,
        rollback_window_ends_at: decode_optional_time(row, "rollback_window_ends_at")?,
        error: column(row, "error")?,
        pause_reason: column(row, "pause_reason")?,
        counts: decode_counts(row)?,
        evaluation: column::<Option<String>>(row, "last_evaluation")?
            .map(|json| {
                serde_json::from_str(&json)
                    .map_err(|e| StoreError::Corrupt(format!("migration evaluation: {e}")))
            })
            .transpose()?,
        gate_override: column::<Option<String>>(row, "gate_override")?
            .map(|json| {
                serde_json::from_str(&json)
                    .map_err(|e| StoreError::Corrupt(format!("migration gate override: {e}")))
            })
            .transpose()?,
        shadow: decode_shadow(row)?,
        cleanup: SourceCleanup {
            deleted: stored_u64(column(row, "source_vectors_deleted")?, "deleted vectors")?,
            done_at: decode_optional_time(row, "cleanup_done_at")?,
        },
    })
}

/// The shadow evidence counted on a migration's row.
pub(super) fn decode_shadow(row: &SqliteRow) -> Result<ShadowEvidence, StoreError> {
    let samples = stored_u64(column(row, "shadow_samples")?, "shadow samples")?;
    let overlap_sum: f64 = column(row, "shadow_overlap_sum")?;
    Ok(ShadowEvidence::from_sum(samples, overlap_sum))
}

fn decode_counts(row: &SqliteRow) -> Result<Counts, StoreError> {
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
