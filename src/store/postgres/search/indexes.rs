//! Building each model's HNSW index: once, by one replica at a time, concurrently with writes
//! (see the parent module's doc, "Building").

use std::time::Duration;

use sqlx::{Executor, PgConnection, PgPool};

use super::super::GATE;
use super::super::codec::store_error;
use super::{Dedicated, Indexed, MAX_HALFVEC_DIMENSIONS};
use crate::store::{ModelIndex, StoreError};

/// The session advisory lock key held while indexes are built (see the parent module's doc).
const BUILD_LOCK: i64 = GATE + 2;

/// How often a replica waiting for another's index build tries the lock again.
const BUILD_LOCK_POLL: Duration = Duration::from_millis(500);

/// Builds the index of each of `models` that lacks a valid one, under the build lock; a model
/// without one needs no lock.
pub(super) async fn build_missing(pool: &PgPool, models: &[ModelIndex]) -> Result<(), StoreError> {
    let indexes: Vec<Index> = models.iter().filter_map(Index::of).collect();
    let mut missing = Vec::new();
    let mut connection = pool.acquire().await.map_err(store_error)?;
    for index in indexes {
        if index_valid(&mut connection, &index.name).await? != Some(true) {
            missing.push(index);
        }
    }
    drop(connection);
    if missing.is_empty() {
        return Ok(());
    }
    let mut session = Dedicated::acquire(pool).await?;
    lock_builds(&mut session).await?;
    for index in &missing {
        index.build(&mut session).await?;
    }
    // Dropping the session closes it: the lock and its settings end with it.
    sqlx::query("SELECT pg_advisory_unlock($1)")
        .bind(BUILD_LOCK)
        .execute(&mut *session)
        .await
        .map_err(store_error)?;
    Ok(())
}

/// The name of the index of `model` at `dimensions`: a 64-bit FNV-1a hash of both, which
/// keeps the name a plain identifier whatever the model id holds. Names are persisted in the
/// database: changing the hash would build every index again under new names.
pub(in crate::store::postgres) fn index_name(model: &str, dimensions: usize) -> String {
    let mut hash: u64 = 0xcbf2_9ce4_8422_2325;
    let bytes = model
        .bytes()
        .chain([0])
        .chain(dimensions.to_string().into_bytes());
    for byte in bytes {
        hash ^= u64::from(byte);
        hash = hash.wrapping_mul(0x0100_0000_01b3);
    }
    format!("vectors_hnsw_{hash:016x}")
}

/// `text` as an SQL string literal, as PostgreSQL's `quote_literal` writes it: quotes doubled,
/// and backslashes doubled in an `E''` literal, which reads the same whatever
/// `standard_conforming_strings` says. PostgreSQL text holds no NUL, so one is refused.
pub(super) fn quote_literal(text: &str) -> Result<String, StoreError> {
    if text.contains('\0') {
        return Err(StoreError::Corrupt(format!(
            "model id {text:?} holds a NUL byte, which PostgreSQL does not store"
        )));
    }
    let quoted = text.replace('\'', "''");
    Ok(if quoted.contains('\\') {
        format!("E'{}'", quoted.replace('\\', "\\\\"))
    } else {
        format!("'{quoted}'")
    })
}

/// The statement that builds the index of `model`, as `indexed`.
fn index_ddl(model: &str, dimensions: usize, indexed: Indexed) -> Result<String, StoreError> {
    let (name, literal, kind) = (
        index_name(model, dimensions),
        quote_literal(model)?,
        indexed,
    );
    let sql_type = kind.sql_type();
    Ok(format!(
        "CREATE INDEX CONCURRENTLY IF NOT EXISTS {name} ON vectors
         USING hnsw ((embedding::{sql_type}({dimensions})) {sql_type}_cosine_ops)
         WHERE model = {literal}"
    ))
}

/// Whether the index `name` on `vectors` is valid; `None` when there is none.
async fn index_valid(
    connection: &mut PgConnection,
    name: &str,
) -> Result<Option<bool>, StoreError> {
    sqlx::query_scalar(
        "SELECT i.indisvalid FROM pg_index i JOIN pg_class c ON c.oid = i.indexrelid
         WHERE c.relname = $1 AND i.indrelid = 'vectors'::regclass",
    )
    .bind(name)
    .fetch_optional(connection)
    .await
    .map_err(store_error)
}

/// Takes the build lock on `session`, trying again every [`BUILD_LOCK_POLL`] while another
/// replica holds it (never blocking inside a statement: see the parent module's doc), and lifts the
/// session's time limits for the builds.
async fn lock_builds(session: &mut PgConnection) -> Result<(), StoreError> {
    let mut announced = false;
    loop {
        let locked: bool = sqlx::query_scalar("SELECT pg_try_advisory_lock($1)")
            .bind(BUILD_LOCK)
            .fetch_one(&mut *session)
            .await
            .map_err(store_error)?;
        if locked {
            break;
        }
        if !announced {
            tracing::info!("another replica is building vector indexes; waiting for it");
            announced = true;
        }
        tokio::time::sleep(BUILD_LOCK_POLL).await;
    }
    session
        .execute(sqlx::raw_sql(
            "SET statement_timeout = 0; SET lock_timeout = 0",
        ))
        .await
        .map_err(store_error)?;
    Ok(())
}

/// The HNSW index of one model.
struct Index {
    model: String,
    name: String,
    /// `CREATE INDEX CONCURRENTLY IF NOT EXISTS ...`
    ddl: String,
}

impl Index {
    /// The index of `model`; `None`, with a warning, when it has more dimensions than HNSW
    /// indexes, or an id PostgreSQL cannot store.
    fn of(model: &ModelIndex) -> Option<Self> {
        let (id, dimensions) = (&model.model, model.dimensions);
        let Some(indexed) = Indexed::for_dimensions(dimensions) else {
            tracing::warn!(
                model = %id,
                dimensions,
                "no vector index: HNSW indexes at most {MAX_HALFVEC_DIMENSIONS} dimensions \
                 (as halfvec), so every query of this model scans all its vectors exactly"
            );
            return None;
        };
        let ddl = match index_ddl(id, dimensions, indexed) {
            Ok(ddl) => ddl,
            Err(error) => {
                tracing::warn!(model = %id, %error, "no vector index");
                return None;
            }
        };
        Some(Self {
            model: id.clone(),
            name: index_name(id, dimensions),
            ddl,
        })
    }

    /// Builds the index unless a valid one exists, dropping an invalid leftover first. Runs
    /// outside any transaction, as `CONCURRENTLY` requires.
    async fn build(&self, session: &mut PgConnection) -> Result<(), StoreError> {
        let (model, name) = (&self.model, &self.name);
        match index_valid(&mut *session, name).await? {
            Some(true) => return Ok(()),
            Some(false) => {
                tracing::warn!(%model, index = %name, "dropping an invalid vector index left by an interrupted build");
                let drop = format!("DROP INDEX CONCURRENTLY IF EXISTS {name}");
                session
                    .execute(sqlx::raw_sql(&drop))
                    .await
                    .map_err(store_error)?;
            }
            None => {}
        }
        tracing::info!(%model, index = %name, "building the model's HNSW index");
        session
            .execute(sqlx::raw_sql(&self.ddl))
            .await
            .map_err(|error| {
                StoreError::Unavailable(format!(
                    "could not build the vector index of model {model:?}: {error}"
                ))
            })?;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn index_names_are_stable_identifiers_distinct_per_model_and_dimensions() {
        // Persisted in databases: this value must never change.
        assert_eq!(index_name("hash-v1", 384), "vectors_hnsw_0e01f32d74764210");
        let names = [
            index_name("hash-v1", 384),
            index_name("hash-v1", 385),
            index_name("hash-v2", 384),
            index_name("it's \"odd\"", 384),
        ];
        for (n, name) in names.iter().enumerate() {
            assert!(
                name.len() < 64,
                "{name}: PostgreSQL truncates identifiers at 63 bytes"
            );
            assert!(name.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'_'));
            assert!(!names[..n].contains(name), "{name} twice");
        }
    }

    #[test]
    fn literals_quote_as_postgresql_does() {
        for (text, literal) in [
            ("hash-v1", "'hash-v1'"),
            ("it's", "'it''s'"),
            ("a\\b", "E'a\\\\b'"),
            ("'\\'", "E'''\\\\'''"),
        ] {
            assert_eq!(quote_literal(text).unwrap(), literal, "{text}");
        }
        assert!(matches!(quote_literal("a\0b"), Err(StoreError::Corrupt(_))));
    }
}
