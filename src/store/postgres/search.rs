//! Nearest-neighbour search inside PostgreSQL with pgvector ([`VectorSearch`]): one HNSW index
//! per model, searched by cosine, filtered in SQL; no replica ever loads a model's vectors.
//!
//! **One index per model.** Every model's vectors share the table `vectors` and its
//! dimensionless `embedding` column; each model gets a partial expression index over its own
//! rows, so no two models ever share an index (invariant 1):
//! `CREATE INDEX vectors_hnsw_<hash> ON vectors USING hnsw ((embedding::vector(D))
//! vector_cosine_ops) WHERE model = '<model>'`. The name hashes the model id with `D`
//! ([`index_name`]), so a model whose dimensions change gets a new index rather than an old one
//! no query can use. The model id is a quoted literal in the DDL and in each query (DDL takes
//! no parameters; in a query, a literal lets any plan, generic or not, match the index's
//! predicate), quoted by [`quote_literal`]. HNSW indexes `vector` up to 2,000 dimensions, so a
//! model of 2,001 to 4,000 indexes `embedding::halfvec(D)` with `halfvec_cosine_ops` instead;
//! the table keeps full precision, and every candidate is scored from it. **Above 4,000
//! dimensions no index can be built:** [`VectorSearch::prepare_indexes`] logs a warning and the
//! model's queries are all exact sequential scans (answered with `exact: true`), correct but
//! slower as the model grows; no start-up is refused for it.
//!
//! **Building.** `CREATE INDEX CONCURRENTLY`, so that writes from the replicas already serving
//! go on while a model that already has many vectors is indexed (a new model's index, over no
//! rows yet, takes one pass over the table). Replicas starting at once take turns on a session
//! advisory lock ([`BUILD_LOCK`]): one builds, the others wait at start-up and then find the
//! indexes there (`IF NOT EXISTS`). The lock is *polled* with `pg_try_advisory_lock` rather
//! than awaited, because a concurrent build waits for every transaction whose snapshot is older
//! than its own, and a replica blocked in `pg_advisory_lock` would hold such a snapshot until
//! the build ends: a deadlock. A build interrupted by a crash leaves an INVALID index (one
//! queries never use but writes keep updating); under the lock no build runs, so an invalid
//! index found there is such a leftover: it is dropped and built again. The builder's session
//! lifts `statement_timeout` and `lock_timeout`, which would otherwise cancel a long build at
//! every start-up; its connection is closed afterwards, never handed back to the pool. Build
//! time depends on the server's `maintenance_work_mem`, which the graph should fit.
//!
//! **Searching.** An approximate query runs in a transaction with, as `SET LOCAL`:
//! `hnsw.ef_search`, the model's `expansion_search` (128 for a model never prepared), raised to
//! `top_k` and kept within pgvector's 1..=1000; `hnsw.iterative_scan = relaxed_order`, so that
//! a filter that rejects the index's first candidates makes the scan go on rather than return
//! fewer hits; and `hnsw.max_scan_tuples` ([`max_scan_tuples`]). Relaxed rather than strict
//! order finds more true neighbours, and order does not matter there: the index only proposes
//! candidates (`ORDER BY embedding::vector(D) <=> query LIMIT top_k`, the index's expression),
//! and an outer query re-orders them by their full-precision cosine distance. Without a filter
//! the setting changes nothing unless the first candidates run short (dead tuples). The filter
//! is inside the SQL: for each field, `documents.metadata -> field` must equal one of the given
//! values as `jsonb` (so `1` and `1.0` are equal; a missing field, null, an object or an array
//! equals no scalar), every value bound, never spliced. On the index path it is a lookup of
//! each candidate's document, which keeps the plan on the index (a join would let the planner
//! start from `documents`, since it estimates any such condition at a fixed 0.5%). Each
//! statement is planned with its values (an unnamed statement), so the planner sees `top_k`.
//!
//! **Exact.** `exact: true` orders by `cosine_distance(...)`, a function no index serves, so
//! every candidate is scored, and answers `exact: true`; its filter is a join, so the planner
//! may find a rare filter's few matches through `documents` first. An approximate query answers `exact: false`
//! (the plan is not inspected: on a small model the planner may well scan, exactly), unless it
//! found fewer than `top_k` hits, the mark of a filter so rare that the scan gave up at
//! `max_scan_tuples`: then the exact query answers instead, as `IndexSet` scans a filter's
//! matches exactly when they are few. Scores are cosines, `1 − cosine distance`.
//!
//! **Cancellation.** A query's future may be dropped at any await (a client hangs up). Its
//! connection is then closed rather than handed back to the pool ([`Dedicated`]), so no
//! transaction or setting outlives it; the request's time limit still applies, as nothing here
//! runs through `run_to_end`.

use std::collections::HashMap;
use std::ops::{Deref, DerefMut};
use std::sync::{PoisonError, RwLock};
use std::time::Duration;

use async_trait::async_trait;
use serde_json::Value;
use sqlx::pool::PoolConnection;
use sqlx::postgres::PgArguments;
use sqlx::query::Query;
use sqlx::{Connection, Executor, PgConnection, PgPool, Postgres};

use super::codec::{check_vector, column, store_error};
use super::{GATE, PostgresStore};
use crate::index::Hit;
use crate::index::filter::{Filter, Scalar};
use crate::store::{ModelIndex, Nearest, StoreError, VectorSearch};

/// The session advisory lock key held while indexes are built (see the module doc).
const BUILD_LOCK: i64 = GATE + 2;

/// How often a replica waiting for another's index build tries the lock again.
const BUILD_LOCK_POLL: Duration = Duration::from_millis(500);

/// `hnsw.ef_search` for a model never prepared: the registry's default `expansion_search`.
const DEFAULT_EF_SEARCH: usize = 128;

/// pgvector's bounds on `hnsw.ef_search`.
const EF_SEARCH_RANGE: (usize, usize) = (1, 1_000);

/// The most dimensions HNSW indexes as `vector`, and as `halfvec`.
const MAX_VECTOR_DIMENSIONS: usize = 2_000;
const MAX_HALFVEC_DIMENSIONS: usize = 4_000;

/// pgvector's default `hnsw.max_scan_tuples`, the least a filtered query may scan.
const MIN_SCAN_TUPLES: usize = 20_000;

/// Index tuples a filtered query may scan per hit it asks for: a filter matching one document
/// in 100 still finds its hits through the index. (`IndexSet` walks its graph only for filters
/// matching at least one in 20.)
const SCAN_TUPLES_PER_HIT: usize = 100;

/// The query settings of each model prepared, kept by the store for its queries.
#[derive(Debug, Default)]
pub(super) struct Settings {
    /// Written by `prepare_indexes` (at start-up), read by every query; held only to copy a
    /// value out, never across an `.await`.
    models: RwLock<HashMap<String, ModelSettings>>,
}

/// What a query of one model needs from its `ModelIndex`.
#[derive(Debug, Clone, Copy)]
struct ModelSettings {
    dimensions: usize,
    ef_search: usize,
}

impl Settings {
    fn remember(&self, model: &ModelIndex) {
        let settings = ModelSettings {
            dimensions: model.dimensions,
            ef_search: model.expansion_search,
        };
        self.models
            .write()
            .unwrap_or_else(PoisonError::into_inner)
            .insert(model.model.clone(), settings);
    }

    fn get(&self, model: &str) -> Option<ModelSettings> {
        let models = self.models.read().unwrap_or_else(PoisonError::into_inner);
        models.get(model).copied()
    }
}

/// The type a model's vectors are indexed as, which its dimensions decide.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Indexed {
    Vector,
    Halfvec,
}

impl Indexed {
    /// `None` above 4,000 dimensions, which HNSW cannot index.
    fn for_dimensions(dimensions: usize) -> Option<Self> {
        if dimensions <= MAX_VECTOR_DIMENSIONS {
            Some(Self::Vector)
        } else if dimensions <= MAX_HALFVEC_DIMENSIONS {
            Some(Self::Halfvec)
        } else {
            None
        }
    }

    fn sql_type(self) -> &'static str {
        match self {
            Self::Vector => "vector",
            Self::Halfvec => "halfvec",
        }
    }
}

/// How a query walks a model's vectors.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Path {
    /// The HNSW index over the vectors as this type proposes the candidates.
    Index(Indexed),
    /// Every candidate is scored.
    Scan,
}

/// The name of the index of `model` at `dimensions`: a 64-bit FNV-1a hash of both, which
/// keeps the name a plain identifier whatever the model id holds. Names are persisted in the
/// database: changing the hash would build every index again under new names.
pub(super) fn index_name(model: &str, dimensions: usize) -> String {
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
fn quote_literal(text: &str) -> Result<String, StoreError> {
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

/// `hnsw.max_scan_tuples` for a filtered query of `top_k` hits.
fn max_scan_tuples(top_k: usize) -> usize {
    top_k
        .saturating_mul(SCAN_TUPLES_PER_HIT)
        .max(MIN_SCAN_TUPLES)
}

/// `hnsw.ef_search` for a query of `top_k` hits on a model that keeps `expansion_search`.
fn ef_search(expansion_search: usize, top_k: usize) -> usize {
    expansion_search
        .max(top_k)
        .clamp(EF_SEARCH_RANGE.0, EF_SEARCH_RANGE.1)
}

#[async_trait]
impl VectorSearch for PostgresStore {
    async fn prepare_indexes(&self, models: &[ModelIndex]) -> Result<(), StoreError> {
        for model in models {
            self.search.remember(model);
        }
        let indexes: Vec<Index> = models.iter().filter_map(Index::of).collect();
        let mut missing = Vec::new();
        let mut connection = self.pool.acquire().await.map_err(store_error)?;
        for index in indexes {
            if index_valid(&mut connection, &index.name).await? != Some(true) {
                missing.push(index);
            }
        }
        drop(connection);
        if missing.is_empty() {
            return Ok(());
        }
        let mut session = Dedicated::acquire(&self.pool).await?;
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

    async fn nearest(
        &self,
        model: &str,
        query: &[f32],
        top_k: usize,
        filter: &Filter,
        exact: bool,
    ) -> Result<Nearest, StoreError> {
        check_vector(model, query)?;
        let settings = self.search.get(model).unwrap_or(ModelSettings {
            dimensions: query.len(),
            ef_search: DEFAULT_EF_SEARCH,
        });
        if query.len() != settings.dimensions {
            // As `IndexSet::search`: the embedder checks dimensions before this.
            return Ok(Nearest {
                hits: Vec::new(),
                exact: true,
            });
        }
        let search = Search::new(model, query, top_k, filter)?;
        if let Some(indexed) = Indexed::for_dimensions(query.len()).filter(|_| !exact) {
            let ef_search = ef_search(settings.ef_search, top_k);
            let hits = search.approximate(&self.pool, indexed, ef_search).await?;
            if hits.len() >= top_k {
                return Ok(Nearest { hits, exact: false });
            }
        }
        let hits = search.fetch(&self.pool, Path::Scan).await?;
        Ok(Nearest { hits, exact: true })
    }
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
/// replica holds it (never blocking inside a statement: see the module doc), and lifts the
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

/// One query's SQL and values: the model, the query vector, `top_k` and the filter's
/// conditions, each a field and the `jsonb` values it may equal.
pub(super) struct Search<'a> {
    model: &'a str,
    query: &'a [f32],
    top_k: usize,
    conditions: Vec<(&'a str, Vec<Value>)>,
}

impl<'a> Search<'a> {
    /// A query of `top_k` hits nearest to `query` among `model`'s vectors that `filter` lets
    /// through.
    pub(super) fn new(
        model: &'a str,
        query: &'a [f32],
        top_k: usize,
        filter: &'a Filter,
    ) -> Result<Self, StoreError> {
        let conditions = filter
            .conditions
            .iter()
            .map(|c| {
                Ok((
                    c.field.as_str(),
                    c.any_of.iter().map(jsonb).collect::<Result<_, _>>()?,
                ))
            })
            .collect::<Result<_, StoreError>>()?;
        Ok(Self {
            model,
            query,
            top_k,
            conditions,
        })
    }

    /// The statement along `path`: candidates in a materialised CTE (ordered by the index's
    /// expression, or by a function no index serves), re-ordered by full-precision distance;
    /// the filter a lookup per candidate on the index path, a join on the scan.
    /// `$1` is the query, `$2` `top_k`, then each condition's field and values.
    pub(super) fn sql(&self, path: Path) -> Result<String, StoreError> {
        let model = quote_literal(self.model)?;
        let dimensions = self.query.len();
        let conditions: Vec<String> = (0..self.conditions.len())
            .map(|n| {
                let (field, values) = (3 + 2 * n, 4 + 2 * n);
                format!("(d.metadata -> ${field}::text) = ANY(${values}::jsonb[])")
            })
            .collect();
        let conditions = conditions.join(" AND ");
        let (join, filter) = match path {
            _ if conditions.is_empty() => ("", String::new()),
            // A lookup per candidate keeps the plan on the index: a join would let the planner
            // start from `documents`, whose conditions it always estimates at 0.5%.
            Path::Index(_) => (
                "",
                format!(" AND (SELECT {conditions} FROM documents d WHERE d.id = v.doc_id)"),
            ),
            // A join lets it find a rare filter's few matches through `documents` first.
            Path::Scan => (
                " JOIN documents d ON d.id = v.doc_id",
                format!(" AND {conditions}"),
            ),
        };
        let order = order_by(path, dimensions);
        Ok(format!(
            "WITH candidates AS MATERIALIZED (
                 SELECT v.doc_id, cosine_distance(v.embedding, $1::real[]::vector) AS distance
                 FROM vectors v{join}
                 WHERE v.model = {model} AND v.dimensions = {dimensions}{filter}
                 ORDER BY {order}
                 LIMIT $2)
             SELECT doc_id, 1 - distance AS score FROM candidates ORDER BY distance, doc_id"
        ))
    }

    /// `statement` (the SQL of [`sql`](Self::sql), or an `EXPLAIN` of it) with this query's
    /// values bound, planned with them.
    pub(super) fn bind<'q>(
        &'q self,
        statement: &'q str,
    ) -> Result<Query<'q, Postgres, PgArguments>, StoreError> {
        let top_k = i64::try_from(self.top_k)
            .map_err(|_| StoreError::Corrupt(format!("top_k {} is too large", self.top_k)))?;
        let mut query = sqlx::query(statement)
            .persistent(false)
            .bind(self.query)
            .bind(top_k);
        for (field, values) in &self.conditions {
            query = query.bind(*field).bind(values);
        }
        Ok(query)
    }

    /// The hits along `path`, best first, in autocommit (an exact scan needs no settings).
    async fn fetch(&self, pool: &PgPool, path: Path) -> Result<Vec<Hit>, StoreError> {
        let sql = self.sql(path)?;
        let rows = self
            .bind(&sql)?
            .fetch_all(pool)
            .await
            .map_err(store_error)?;
        rows.iter().map(decode_hit).collect()
    }

    /// The hits the index of `indexed` proposes, in a transaction with the search settings.
    async fn approximate(
        &self,
        pool: &PgPool,
        indexed: Indexed,
        ef_search: usize,
    ) -> Result<Vec<Hit>, StoreError> {
        let sql = self.sql(Path::Index(indexed))?;
        let mut connection = Dedicated::acquire(pool).await?;
        let mut tx = connection.begin().await.map_err(store_error)?;
        set_search_settings(&mut tx, ef_search, self.top_k).await?;
        let rows = self
            .bind(&sql)?
            .fetch_all(&mut *tx)
            .await
            .map_err(store_error)?;
        tx.commit().await.map_err(store_error)?;
        connection.finish();
        rows.iter().map(decode_hit).collect()
    }
}

/// The `ORDER BY` of the candidates along `path`: the index's own expression, or the distance
/// by a function no index serves (ties by id, as `IndexSet` breaks them).
fn order_by(path: Path, dimensions: usize) -> String {
    match path {
        Path::Index(indexed) => {
            let t = indexed.sql_type();
            format!("v.embedding::{t}({dimensions}) <=> $1::real[]::{t}({dimensions})")
        }
        Path::Scan => "distance, v.doc_id".to_owned(),
    }
}

/// Sets, for the rest of the transaction on `connection`, the HNSW search settings of a query
/// of `top_k` hits (see the module doc).
pub(super) async fn set_search_settings(
    connection: &mut PgConnection,
    ef_search: usize,
    top_k: usize,
) -> Result<(), StoreError> {
    sqlx::query(
        "SELECT set_config('hnsw.ef_search', $1, true),
                set_config('hnsw.iterative_scan', 'relaxed_order', true),
                set_config('hnsw.max_scan_tuples', $2, true)",
    )
    .bind(ef_search.to_string())
    .bind(max_scan_tuples(top_k).to_string())
    .execute(connection)
    .await
    .map_err(store_error)?;
    Ok(())
}

/// A filter's scalar as the `jsonb` value it compares with: numbers by value, so `1` equals
/// `1.0` and `1e0` in the database as in `Filter::matches`.
fn jsonb(scalar: &Scalar) -> Result<Value, StoreError> {
    Ok(match scalar {
        Scalar::String(text) => Value::String(text.clone()),
        Scalar::Bool(flag) => Value::Bool(*flag),
        Scalar::Integer(number) => Value::from(*number),
        Scalar::Float(bits) => Value::from(f64::from_bits(*bits)),
        Scalar::Digits(digits) => serde_json::from_str(digits).map_err(|error| {
            StoreError::Corrupt(format!("filter number {digits} does not parse: {error}"))
        })?,
    })
}

/// A row of a search: `doc_id` and its cosine `score`.
fn decode_hit(row: &sqlx::postgres::PgRow) -> Result<Hit, StoreError> {
    let score: f64 = column(row, "score")?;
    Ok(Hit {
        id: column(row, "doc_id")?,
        // A cosine, within [-1, 1]: f32 holds it as the in-memory index does.
        score: score as f32,
    })
}

/// A pooled connection that goes back to the pool only once its work [finished]: dropped
/// before (the caller stopped waiting, or the work failed), it is closed instead, so no
/// transaction begun on it, setting made or lock taken outlives the work. (sqlx 0.8 would hand
/// back a connection whose `BEGIN` was sent but not yet answered, inside a transaction it does
/// not know of.)
///
/// [finished]: Dedicated::finish
struct Dedicated {
    connection: PoolConnection<Postgres>,
    finished: bool,
}

impl Dedicated {
    async fn acquire(pool: &PgPool) -> Result<Self, StoreError> {
        Ok(Self {
            connection: pool.acquire().await.map_err(store_error)?,
            finished: false,
        })
    }

    /// The work is done and left nothing behind: the connection may serve others.
    fn finish(mut self) {
        self.finished = true;
    }
}

impl Deref for Dedicated {
    type Target = PgConnection;

    fn deref(&self) -> &PgConnection {
        &self.connection
    }
}

impl DerefMut for Dedicated {
    fn deref_mut(&mut self) -> &mut PgConnection {
        &mut self.connection
    }
}

impl Drop for Dedicated {
    fn drop(&mut self) {
        if !self.finished {
            self.connection.close_on_drop();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn models_index_as_vector_then_halfvec_then_not_at_all() {
        for (dimensions, indexed) in [
            (1, Some(Indexed::Vector)),
            (2_000, Some(Indexed::Vector)),
            (2_001, Some(Indexed::Halfvec)),
            (4_000, Some(Indexed::Halfvec)),
            (4_001, None),
        ] {
            assert_eq!(Indexed::for_dimensions(dimensions), indexed, "{dimensions}");
        }
    }

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

    #[test]
    fn search_settings_stay_within_pgvector_bounds() {
        assert_eq!(ef_search(128, 10), 128);
        assert_eq!(ef_search(128, 500), 500);
        assert_eq!(ef_search(5_000, 10), 1_000);
        assert_eq!(max_scan_tuples(10), 20_000);
        assert_eq!(max_scan_tuples(1_000), 100_000);
    }
}
