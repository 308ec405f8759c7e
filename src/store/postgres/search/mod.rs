//! Nearest-neighbour search inside PostgreSQL with pgvector ([`VectorSearch`]): one HNSW index
//! per model, searched by cosine, filtered in SQL; no replica ever loads a model's vectors.
//!
//! **One index per model.** Every model's vectors share the table `vectors` and its
//! dimensionless `embedding` column; each model gets a partial expression index over its own
//! rows, so no two models ever share an index (invariant 1):
//! `CREATE INDEX vectors_hnsw_<hash> ON vectors USING hnsw ((embedding::vector(D))
//! vector_cosine_ops) WHERE model = '<model>'`. The name hashes the model id with `D`
//! ([`indexes::index_name`]), so a model whose dimensions change gets a new index rather than
//! an old one no query can use. The model id is a quoted literal in the DDL and in each query (DDL takes
//! no parameters; in a query, a literal lets any plan, generic or not, match the index's
//! predicate), quoted by [`indexes::quote_literal`]. HNSW indexes `vector` up to 2,000
//! dimensions, so a model of 2,001 to 4,000 indexes `embedding::halfvec(D)` with `halfvec_cosine_ops` instead;
//! the table keeps full precision, and every candidate is scored from it. **Above 4,000
//! dimensions no index can be built:** [`VectorSearch::prepare_indexes`] logs a warning and the
//! model's queries are all exact sequential scans (answered with `exact: true`), correct but
//! slower as the model grows; no start-up is refused for it.
//!
//! **Building.** `CREATE INDEX CONCURRENTLY`, so that writes from the replicas already serving
//! go on while a model that already has many vectors is indexed (a new model's index, over no
//! rows yet, takes one pass over the table). Replicas starting at once take turns on a session
//! advisory lock (`indexes::BUILD_LOCK`): one builds, the others wait at start-up and then find the
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
//! fewer hits; and `hnsw.max_scan_tuples` (`query::max_scan_tuples`). Relaxed rather than strict
//! order finds more true neighbours, and order does not matter there: the index only proposes
//! candidates (`ORDER BY embedding::vector(D) <=> query LIMIT ef_search`, the index's
//! expression: every candidate the walk keeps, since the relaxed order's first `top_k` are not
//! always the best), and an outer query re-orders them by their full-precision cosine distance
//! and keeps `top_k`. Without a filter the setting changes nothing unless the first candidates run short (dead tuples). The filter
//! is inside the SQL: for each field, `documents.metadata::jsonb -> field` must equal one of
//! the given values as `jsonb` (so `1` and `1.0` are equal; a missing field, null, an object or
//! an array equals no scalar), every value bound, never spliced. On the index path it is a
//! lookup of each candidate's document, which keeps the plan on the index (a join would let
//! the planner start from `documents`, since it estimates any such condition at a fixed
//! 0.5%). Each statement is planned with its values (an unnamed statement), so the planner
//! sees `top_k`.
//!
//! **Exact.** `exact: true` orders by `cosine_distance(...)`, a function no index serves, so
//! every candidate is scored, and answers `exact: true`; its filter is a join, so the planner
//! may find a rare filter's few matches through `documents` first. An approximate query answers `exact: false`
//! (the plan is not inspected: on a small model the planner may well scan, exactly), unless it
//! found fewer than `top_k` hits, the mark of a filter so rare that the scan gave up at
//! `max_scan_tuples`: then the exact query answers instead, as `IndexSet` scans a filter's
//! matches exactly when they are few. Scores are cosines, `1 − cosine distance`.
//!
//! **Evaluation.** [`VectorSearch::nearest_in_both`] scans a model's vectors exactly, keeping
//! only documents that also have a vector of the other model (`EXISTS` on the primary key).
//!
//! **Cancellation.** A query's future may be dropped at any await (a client hangs up). Its
//! connection is then closed rather than handed back to the pool ([`Dedicated`]), so no
//! transaction or setting outlives it; the request's time limit still applies, as nothing here
//! runs through `run_to_end`.
//!
//! Layout: this file keeps each model's settings and answers [`VectorSearch`]; `indexes`
//! builds the indexes, `query` writes and runs the statements.

pub(super) mod indexes;
pub(super) mod query;

use std::collections::HashMap;
use std::ops::{Deref, DerefMut};
use std::sync::{PoisonError, RwLock};

use async_trait::async_trait;
use sqlx::pool::PoolConnection;
use sqlx::{PgConnection, PgPool, Postgres};

use super::PostgresStore;
use super::codec::{check_vector, store_error};
use crate::index::Hit;
use crate::index::filter::Filter;
use crate::store::{ModelIndex, Nearest, StoreError, VectorSearch};
use query::{Path, Search, ef_search};

/// `hnsw.ef_search` for a model never prepared: the registry's default `expansion_search`.
const DEFAULT_EF_SEARCH: usize = 128;

/// The most dimensions HNSW indexes as `vector`, and as `halfvec`.
const MAX_VECTOR_DIMENSIONS: usize = 2_000;
const MAX_HALFVEC_DIMENSIONS: usize = 4_000;

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

#[async_trait]
impl VectorSearch for PostgresStore {
    async fn prepare_indexes(&self, models: &[ModelIndex]) -> Result<(), StoreError> {
        for model in models {
            self.search.remember(model);
        }
        indexes::build_missing(&self.pool, models).await
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

    async fn drop_index(&self, model: &str, dimensions: usize) -> Result<(), StoreError> {
        // CONCURRENTLY: writes to `vectors` go on meanwhile (it cannot run in a transaction).
        let drop = format!(
            "DROP INDEX CONCURRENTLY IF EXISTS {}",
            indexes::index_name(model, dimensions)
        );
        sqlx::query(&drop)
            .execute(&self.pool)
            .await
            .map_err(store_error)?;
        Ok(())
    }

    async fn nearest_in_both(
        &self,
        model: &str,
        other: &str,
        query: &[f32],
        top_k: usize,
    ) -> Result<Vec<Hit>, StoreError> {
        check_vector(model, query)?;
        query::in_both(&self.pool, model, other, query, top_k).await
    }
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
}
