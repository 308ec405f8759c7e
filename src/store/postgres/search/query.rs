//! The statements of a search and the settings they run with (see the parent module's doc,
//! "Searching" and "Exact").

use serde_json::Value;
use sqlx::postgres::{PgArguments, PgRow};
use sqlx::query::Query;
use sqlx::{Connection, PgConnection, PgPool, Postgres};

use super::super::codec::{column, store_error};
use super::indexes::quote_literal;
use super::{Dedicated, Indexed};
use crate::index::Hit;
use crate::index::filter::{Filter, Scalar};
use crate::store::StoreError;

/// pgvector's bounds on `hnsw.ef_search`.
const EF_SEARCH_RANGE: (usize, usize) = (1, 1_000);

/// pgvector's default `hnsw.max_scan_tuples`, the least a filtered query may scan.
const MIN_SCAN_TUPLES: usize = 20_000;

/// Index tuples a filtered query may scan per hit it asks for: a filter matching one document
/// in 100 still finds its hits through the index. (`IndexSet` walks its graph only for filters
/// matching at least one in 20.)
const SCAN_TUPLES_PER_HIT: usize = 100;

/// How a query walks a model's vectors.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(in crate::store::postgres) enum Path {
    /// The HNSW index over the vectors as this type proposes the candidates.
    Index(Indexed),
    /// Every candidate is scored.
    Scan,
}

/// `hnsw.max_scan_tuples` for an approximate query of `top_k` hits: how far its iterative scan
/// may go when a filter rejects candidates.
fn max_scan_tuples(top_k: usize) -> usize {
    top_k
        .saturating_mul(SCAN_TUPLES_PER_HIT)
        .max(MIN_SCAN_TUPLES)
}

/// `hnsw.ef_search` for a query of `top_k` hits on a model that keeps `expansion_search`.
pub(super) fn ef_search(expansion_search: usize, top_k: usize) -> usize {
    expansion_search
        .max(top_k)
        .clamp(EF_SEARCH_RANGE.0, EF_SEARCH_RANGE.1)
}

/// One query's SQL and values: the model, the query vector, `top_k` and the filter's
/// conditions, each a field and the `jsonb` values it may equal.
pub(in crate::store::postgres) struct Search<'a> {
    model: &'a str,
    query: &'a [f32],
    top_k: usize,
    conditions: Vec<(&'a str, Vec<Value>)>,
}

impl<'a> Search<'a> {
    /// A query of `top_k` hits nearest to `query` among `model`'s vectors that `filter` lets
    /// through.
    pub(in crate::store::postgres) fn new(
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
    pub(in crate::store::postgres) fn sql(&self, path: Path) -> Result<String, StoreError> {
        let model = quote_literal(self.model)?;
        let dimensions = self.query.len();
        let conditions: Vec<String> = (0..self.conditions.len())
            .map(|n| {
                let (field, values) = (3 + 2 * n, 4 + 2 * n);
                format!("(d.metadata::jsonb -> ${field}::text) = ANY(${values}::jsonb[])")
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
             SELECT doc_id, 1 - distance AS score FROM candidates ORDER BY distance, doc_id
             LIMIT {top_k}",
            top_k = self.top_k,
        ))
    }

    /// `statement` (the SQL of [`sql`](Self::sql), or an `EXPLAIN` of it) with this query's
    /// values bound, planned with them, taking `candidates` rows from the index or the scan
    /// before the best `top_k` of them are kept.
    pub(in crate::store::postgres) fn bind<'q>(
        &'q self,
        statement: &'q str,
        candidates: usize,
    ) -> Result<Query<'q, Postgres, PgArguments>, StoreError> {
        let candidates = i64::try_from(candidates.max(self.top_k))
            .map_err(|_| StoreError::Corrupt(format!("{candidates} candidates is too many")))?;
        let mut query = sqlx::query(statement)
            .persistent(false)
            .bind(self.query)
            .bind(candidates);
        for (field, values) in &self.conditions {
            query = query.bind(*field).bind(values);
        }
        Ok(query)
    }

    /// The hits along `path`, best first, in autocommit (an exact scan needs no settings).
    pub(super) async fn fetch(&self, pool: &PgPool, path: Path) -> Result<Vec<Hit>, StoreError> {
        let sql = self.sql(path)?;
        let rows = self
            .bind(&sql, self.top_k)?
            .fetch_all(pool)
            .await
            .map_err(store_error)?;
        rows.iter().map(decode_hit).collect()
    }

    /// The hits the index of `indexed` proposes, in a transaction with the search settings.
    pub(super) async fn approximate(
        &self,
        pool: &PgPool,
        indexed: Indexed,
        ef_search: usize,
    ) -> Result<Vec<Hit>, StoreError> {
        let sql = self.sql(Path::Index(indexed))?;
        let mut connection = Dedicated::acquire(pool).await?;
        let mut tx = connection.begin().await.map_err(store_error)?;
        set_search_settings(&mut tx, ef_search, self.top_k).await?;
        // All the candidates the walk keeps (`ef_search`), re-ranked by full-precision
        // distance: the relaxed order's first `top_k` are not always the best `top_k`.
        let rows = self
            .bind(&sql, ef_search)?
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
/// of `top_k` hits (see the parent module's doc).
pub(in crate::store::postgres) async fn set_search_settings(
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

/// The `top_k` of `model`'s vectors nearest to `query` among the documents that also have a
/// vector of `other`, by a full scan (see [`VectorSearch::nearest_in_both`]).
///
/// [`VectorSearch::nearest_in_both`]: crate::store::VectorSearch::nearest_in_both
pub(super) async fn in_both(
    pool: &PgPool,
    model: &str,
    other: &str,
    query: &[f32],
    top_k: usize,
) -> Result<Vec<Hit>, StoreError> {
    let dimensions = i32::try_from(query.len())
        .map_err(|_| StoreError::Corrupt(format!("{} dimensions", query.len())))?;
    let limit = i64::try_from(top_k)
        .map_err(|_| StoreError::Corrupt(format!("top_k {top_k} is too many")))?;
    let rows = sqlx::query(
        "SELECT doc_id, 1 - distance AS score FROM (
             SELECT v.doc_id, cosine_distance(v.embedding, $1::real[]::vector) AS distance
             FROM vectors v
             WHERE v.model = $2 AND v.dimensions = $4
               AND EXISTS (SELECT 1 FROM vectors o WHERE o.model = $3 AND o.doc_id = v.doc_id)
         ) scored
         ORDER BY distance, doc_id
         LIMIT $5",
    )
    .bind(query)
    .bind(model)
    .bind(other)
    .bind(dimensions)
    .bind(limit)
    .fetch_all(pool)
    .await
    .map_err(store_error)?;
    rows.iter().map(decode_hit).collect()
}

/// A row of a search: `doc_id` and its cosine `score`.
fn decode_hit(row: &PgRow) -> Result<Hit, StoreError> {
    let score: f64 = column(row, "score")?;
    Ok(Hit {
        id: column(row, "doc_id")?,
        // A cosine, within [-1, 1]: f32 holds it as the in-memory index does.
        score: score as f32,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn search_settings_stay_within_pgvector_bounds() {
        assert_eq!(ef_search(128, 10), 128);
        assert_eq!(ef_search(128, 500), 500);
        assert_eq!(ef_search(5_000, 10), 1_000);
        assert_eq!(max_scan_tuples(10), 20_000);
        assert_eq!(max_scan_tuples(1_000), 100_000);
    }
}
