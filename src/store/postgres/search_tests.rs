//! The database's own vector search (`search.rs`) against a real server with pgvector: answers
//! checked against a brute-force cosine scan, filters against `Filter::matches`, plans with
//! `EXPLAIN`, and index builds from replicas starting at once.

use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use serde_json::{Value, json};
use sqlx::Row;

use super::super::PostgresStore;
use super::super::search::Indexed;
use super::super::search::indexes::index_name;
use super::super::search::query::{Path, Search, set_search_settings};
use super::{PostgresBackend, backend};
use crate::index::filter::Filter;
use crate::store::{DocumentWrite, ModelIndex, Store, VectorSearch};

/// One stored document of a test corpus: its id, metadata and vector.
type Stored = (String, Value, Vec<f32>);

fn model(id: &str, dimensions: usize) -> ModelIndex {
    ModelIndex {
        model: id.to_owned(),
        dimensions,
        expansion_search: 64,
    }
}

/// A random unit vector.
fn unit(rng: &mut StdRng, dimensions: usize) -> Vec<f32> {
    let raw: Vec<f32> = (0..dimensions)
        .map(|_| rng.random_range(-1.0..1.0))
        .collect();
    let norm = raw.iter().map(|x| x * x).sum::<f32>().sqrt();
    raw.into_iter().map(|x| x / norm).collect()
}

fn cosine(a: &[f32], b: &[f32]) -> f64 {
    let dot = |x: &[f32], y: &[f32]| -> f64 {
        x.iter()
            .zip(y)
            .map(|(p, q)| f64::from(*p) * f64::from(*q))
            .sum()
    };
    dot(a, b) / (dot(a, a) * dot(b, b)).sqrt()
}

/// The `top_k` documents of `corpus` that `filter` matches, best cosine first (ties by id, as
/// `IndexSet` breaks them), with their cosines.
fn brute_force(
    corpus: &[Stored],
    query: &[f32],
    top_k: usize,
    filter: &Filter,
) -> Vec<(String, f64)> {
    let mut scored: Vec<(String, f64)> = corpus
        .iter()
        .filter(|(_, metadata, _)| filter.matches(metadata))
        .map(|(id, _, vector)| (id.clone(), cosine(vector, query)))
        .collect();
    scored.sort_by(|a, b| b.1.total_cmp(&a.1).then_with(|| a.0.cmp(&b.0)));
    scored.truncate(top_k);
    scored
}

fn ids(hits: &[crate::index::Hit]) -> Vec<String> {
    hits.iter().map(|hit| hit.id.clone()).collect()
}

/// A store on `backend`'s database with the indexes of `models` prepared.
async fn prepared(backend: &PostgresBackend, models: &[ModelIndex]) -> PostgresStore {
    let store = backend.connect().await;
    store
        .prepare_indexes(models)
        .await
        .expect("indexes prepared");
    store
}

/// Writes `count` documents of random `dimensions`-long vectors of `model`, ids
/// `{prefix}{n:05}`, metadata from `metadata(n)`; returns them as stored.
async fn corpus(
    store: &PostgresStore,
    model: &str,
    dimensions: usize,
    (prefix, count): (&str, usize),
    metadata: impl Fn(usize) -> Value,
) -> Vec<Stored> {
    let seed = prefix
        .bytes()
        .chain(model.bytes())
        .fold(count as u64, |h, b| h.wrapping_mul(31) ^ u64::from(b));
    let mut rng = StdRng::seed_from_u64(seed);
    let stored: Vec<Stored> = (0..count)
        .map(|n| {
            (
                format!("{prefix}{n:05}"),
                metadata(n),
                unit(&mut rng, dimensions),
            )
        })
        .collect();
    for chunk in stored.chunks(500) {
        let writes: Vec<DocumentWrite> = chunk
            .iter()
            .map(|(id, metadata, vector)| DocumentWrite {
                id: id.clone(),
                text: format!("text of {id}"),
                metadata: metadata.clone(),
                vectors: vec![(model.to_owned(), vector.clone())],
                kept: None,
            })
            .collect();
        store.write_documents(&writes).await.expect("write");
    }
    sqlx::query("ANALYZE").execute(&store.pool).await.unwrap();
    stored
}

/// The plan of `search` along `path`, with the settings an approximate query runs with; with
/// `index_if_any`, as if any other plan (a scan, a sort) cost too much, so that a small table
/// shows whether an index matches the query at all.
async fn explain(
    store: &PostgresStore,
    search: &Search<'_>,
    path: Path,
    index_if_any: bool,
) -> String {
    let statement = format!("EXPLAIN {}", search.sql(path).unwrap());
    let mut tx = store.pool.begin().await.unwrap();
    set_search_settings(&mut tx, 64, 10).await.unwrap();
    if index_if_any {
        sqlx::raw_sql(
            "SET LOCAL enable_seqscan = off; SET LOCAL enable_bitmapscan = off;
             SET LOCAL enable_sort = off",
        )
        .execute(&mut *tx)
        .await
        .unwrap();
    }
    let rows = search
        .bind(&statement, 64)
        .unwrap()
        .fetch_all(&mut *tx)
        .await
        .expect("explain");
    rows.iter()
        .map(|row| row.get::<String, _>(0) + "\n")
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn nearest_is_the_brute_force_answer_by_cosine_within_one_model() {
    let backend = backend().await;
    let store = prepared(&backend, &[model("a", 8), model("b", 8)]).await;
    let only_a = corpus(&store, "a", 8, ("a-", 300), |_| json!({})).await;
    let only_b = corpus(&store, "b", 8, ("b-", 300), |_| json!({})).await;
    let everything = Filter::default();
    let mut rng = StdRng::seed_from_u64(7);
    for round in 0..10 {
        let query = unit(&mut rng, 8);
        let top_k = 1 + round * 3;
        let truth = brute_force(&only_a, &query, top_k, &everything);
        let exact = store
            .nearest("a", &query, top_k, &everything, true)
            .await
            .unwrap();
        assert!(exact.exact);
        assert_eq!(
            ids(&exact.hits),
            truth.iter().map(|t| t.0.clone()).collect::<Vec<_>>()
        );
        let approximate = store
            .nearest("a", &query, top_k, &everything, false)
            .await
            .unwrap();
        assert_eq!(approximate.hits.len(), top_k, "top_k respected");
        let found = approximate
            .hits
            .iter()
            .filter(|h| truth.iter().any(|t| t.0 == h.id));
        assert!(
            found.count() * 10 >= top_k * 9,
            "recall below 0.9 in round {round}"
        );
        for hit in exact.hits.iter().chain(&approximate.hits) {
            assert!(
                hit.id.starts_with("a-"),
                "{} of model b answered a query of a",
                hit.id
            );
            let vector = &only_a.iter().find(|s| s.0 == hit.id).unwrap().2;
            let expected = cosine(vector, &query);
            assert!(
                (f64::from(hit.score) - expected).abs() < 1e-5,
                "{hit:?} vs {expected}"
            );
        }
    }
    let query = unit(&mut rng, 8);
    let b_hits = store
        .nearest("b", &query, 500, &everything, false)
        .await
        .unwrap();
    assert_eq!(
        b_hits.hits.len(),
        only_b.len(),
        "every b vector and nothing else"
    );
    assert!(b_hits.hits.iter().all(|hit| hit.id.starts_with("b-")));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn filters_let_through_exactly_the_documents_filter_rs_matches() {
    let backend = backend().await;
    let store = prepared(&backend, &[model("m", 4)]).await;
    let shapes = [
        json!({"lang": "en", "n": 1, "flag": true}),
        json!({"lang": "de", "n": 1.0, "flag": false}),
        json!({"lang": "en", "n": 2.5}),
        json!({"n": "1", "flag": "true"}),
        json!({"lang": null, "n": [1]}),
        json!({"lang": ["en"], "n": {"v": 1}}),
        json!({"lang": {"en": true}}),
        json!({}),
        json!(null),
        json!([1, 2]),
    ];
    let stored = corpus(&store, "m", 4, ("d-", 40), |n| {
        shapes[n % shapes.len()].clone()
    })
    .await;
    let mut rng = StdRng::seed_from_u64(11);
    for filter in [
        json!({}),
        json!({"lang": "en"}),
        json!({"lang": ["en", "de"]}),
        json!({"n": 1}),
        json!({"n": 1.0}),
        json!({"n": [2.5, 1e0]}),
        json!({"n": "1"}),
        json!({"flag": true}),
        json!({"flag": [false, "true"]}),
        json!({"lang": "en", "n": 1}),
        json!({"missing": 1}),
    ] {
        let parsed = Filter::parse(&filter).unwrap();
        let query = unit(&mut rng, 4);
        let truth = brute_force(&stored, &query, 100, &parsed);
        assert!(
            filter == json!({"missing": 1}) || !truth.is_empty(),
            "{filter} matches nothing: a useless case"
        );
        for exact in [true, false] {
            let found = store
                .nearest("m", &query, 100, &parsed, exact)
                .await
                .unwrap();
            let mut got = ids(&found.hits);
            let mut want: Vec<String> = truth.iter().map(|t| t.0.clone()).collect();
            got.sort();
            want.sort();
            assert_eq!(got, want, "filter {filter}, exact {exact}");
        }
    }
}

/// 3,000 vectors of which 1% match: the index alone (iterative scan, no exact fallback) finds
/// all `top_k`, and they are the brute-force answer; the index is what answered.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_rare_filter_still_gets_top_k_hits_through_the_index() {
    let backend = backend().await;
    let store = prepared(&backend, &[model("m", 16)]).await;
    let stored = corpus(
        &store,
        "m",
        16,
        ("d-", 3_000),
        |n| json!({"rare": n % 100 == 0}),
    )
    .await;
    let rare = Filter::parse(&json!({"rare": true})).unwrap();
    let mut rng = StdRng::seed_from_u64(5);
    for _ in 0..5 {
        let query = unit(&mut rng, 16);
        let truth = brute_force(&stored, &query, 10, &rare);
        let found = store.nearest("m", &query, 10, &rare, false).await.unwrap();
        assert!(
            !found.exact,
            "the exact fallback answered: the index found too few"
        );
        assert_eq!(
            ids(&found.hits),
            truth.iter().map(|t| t.0.clone()).collect::<Vec<_>>()
        );
    }
    let query = unit(&mut rng, 16);
    let search = Search::new("m", &query, 10, &rare).unwrap();
    let plan = explain(&store, &search, Path::Index(Indexed::Vector), false).await;
    assert!(
        plan.contains(&index_name("m", 16)),
        "the index is not used:\n{plan}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn exact_scans_every_vector_and_only_the_approximate_plan_uses_the_index() {
    let backend = backend().await;
    let store = prepared(&backend, &[model("m", 16)]).await;
    let stored = corpus(
        &store,
        "m",
        16,
        ("d-", 3_000),
        |n| json!({"even": n % 2 == 0}),
    )
    .await;
    let mut rng = StdRng::seed_from_u64(3);
    for filter in [json!({}), json!({"even": true})] {
        let filter = Filter::parse(&filter).unwrap();
        let query = unit(&mut rng, 16);
        let truth = brute_force(&stored, &query, 10, &filter);
        let found = store.nearest("m", &query, 10, &filter, true).await.unwrap();
        assert!(found.exact);
        assert_eq!(
            ids(&found.hits),
            truth.iter().map(|t| t.0.clone()).collect::<Vec<_>>()
        );
        let search = Search::new("m", &query, 10, &filter).unwrap();
        let index = index_name("m", 16);
        let approximate = explain(&store, &search, Path::Index(Indexed::Vector), false).await;
        assert!(
            approximate.contains(&index),
            "no index scan:\n{approximate}"
        );
        let scan = explain(&store, &search, Path::Scan, false).await;
        assert!(
            !scan.contains("vectors_hnsw_"),
            "an index scan when exact:\n{scan}"
        );
    }
}

/// The index definitions of the `vectors` table that are HNSW indexes.
async fn hnsw_indexes(store: &PostgresStore) -> Vec<(String, String, bool)> {
    sqlx::query_as(
        "SELECT p.indexname::text, p.indexdef, i.indisvalid FROM pg_indexes p
         JOIN pg_class c ON c.relname = p.indexname JOIN pg_index i ON i.indexrelid = c.oid
         WHERE p.tablename = 'vectors' AND p.indexdef LIKE '%USING hnsw%' ORDER BY 1",
    )
    .fetch_all(&store.pool)
    .await
    .unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn replicas_prepare_the_same_indexes_at_once_and_again_harmlessly() {
    let backend = backend().await;
    let models = [
        model("it's \\ odd", 8),
        model("wide", 3_000),
        model("too-wide", 4_001),
    ];
    let (first, second) = (backend.connect().await, backend.connect().await);
    let (a, b) = tokio::join!(
        first.prepare_indexes(&models),
        second.prepare_indexes(&models)
    );
    a.expect("first replica");
    b.expect("second replica");
    first.prepare_indexes(&models).await.expect("again");
    let indexes = hnsw_indexes(&first).await;
    assert_eq!(indexes.len(), 2, "{indexes:?}");
    let find = |model: &str, dimensions| {
        let name = index_name(model, dimensions);
        indexes
            .iter()
            .find(|i| i.0 == name)
            .cloned()
            .expect("an index per model")
    };
    let (_, odd, valid) = find("it's \\ odd", 8);
    assert!(valid);
    assert!(
        odd.contains("vector_cosine_ops") && odd.contains("::vector(8)"),
        "{odd}"
    );
    assert!(
        odd.ends_with(r"WHERE (model = 'it''s \ odd'::text)"),
        "{odd}"
    );
    let (_, wide, _) = find("wide", 3_000);
    assert!(
        wide.contains("halfvec_cosine_ops") && wide.contains("::halfvec(3000)"),
        "{wide}"
    );

    let mut rng = StdRng::seed_from_u64(1);
    for (id, dimensions, indexed) in [
        ("it's \\ odd", 8, Some(Indexed::Vector)),
        ("wide", 3_000, Some(Indexed::Halfvec)),
        ("too-wide", 4_001, None),
    ] {
        let stored = corpus(&first, id, dimensions, ("d-", 20), |_| json!({})).await;
        let query = unit(&mut rng, dimensions);
        let everything = Filter::default();
        if let Some(indexed) = indexed {
            let search = Search::new(id, &query, 5, &everything).unwrap();
            let plan = explain(&first, &search, Path::Index(indexed), true).await;
            let name = index_name(id, dimensions);
            assert!(
                plan.contains(&name),
                "{id}: the query does not match {name}:\n{plan}"
            );
        }
        let truth = brute_force(&stored, &query, 5, &everything);
        let found = second
            .nearest(id, &query, 5, &everything, false)
            .await
            .unwrap();
        assert_eq!(found.exact, indexed.is_none(), "{id}");
        assert_eq!(
            ids(&found.hits),
            truth.iter().map(|t| t.0.clone()).collect::<Vec<_>>(),
            "{id}"
        );
    }
}

/// A crash during a concurrent build leaves the index invalid: the next start-up rebuilds it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_invalid_index_left_by_an_interrupted_build_is_rebuilt() {
    let backend = backend().await;
    let models = [model("m", 8)];
    let store = prepared(&backend, &models).await;
    sqlx::query(
        "UPDATE pg_index SET indisvalid = false
         WHERE indexrelid = (SELECT oid FROM pg_class WHERE relname = $1)",
    )
    .bind(index_name("m", 8))
    .execute(&store.pool)
    .await
    .unwrap();
    assert!(!hnsw_indexes(&store).await[0].2);
    let restarted = prepared(&backend, &models).await;
    let indexes = hnsw_indexes(&restarted).await;
    assert_eq!(indexes.len(), 1);
    assert!(indexes[0].2, "still invalid: {indexes:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_query_of_the_wrong_length_or_an_unprepared_model_still_answers() {
    let backend = backend().await;
    let store = prepared(&backend, &[model("m", 8)]).await;
    let stored = corpus(&store, "m", 8, ("d-", 20), |_| json!({})).await;
    let everything = Filter::default();
    let wrong = store
        .nearest("m", &[1.0; 4], 5, &everything, false)
        .await
        .unwrap();
    assert!(wrong.hits.is_empty());
    let fresh = backend.connect().await;
    let query = &stored[3].2;
    let found = fresh
        .nearest("m", query, 1, &everything, false)
        .await
        .unwrap();
    assert_eq!(ids(&found.hits), ["d-00003"]);
    assert!((found.hits[0].score - 1.0).abs() < 1e-5);
}

/// A search dropped at any await (its client hung up) leaves no connection inside a
/// transaction, and the store goes on answering.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_search_dropped_at_any_await_leaves_no_transaction_behind() {
    use futures_util::FutureExt;
    use sqlx::{Connection, PgConnection};

    let backend = backend().await;
    let store = prepared(&backend, &[model("m", 8)]).await;
    let stored = corpus(&store, "m", 8, ("d-", 50), |n| json!({"n": n % 2})).await;
    let mut observer = PgConnection::connect_with(&backend.options).await.unwrap();
    let filter = Filter::parse(&json!({"n": 1})).unwrap();
    let query = &stored[1].2;
    for polls in 1..=12 {
        for pause_micros in [0, 50, 200, 500] {
            let mut pending = Box::pin(store.nearest("m", query, 5, &filter, false));
            for _ in 0..polls {
                if (&mut pending).now_or_never().is_some() {
                    break;
                }
                std::thread::sleep(std::time::Duration::from_micros(pause_micros));
                tokio::task::yield_now().await;
            }
            drop(pending);
            // The dropped connection is closed or handed back by a task: let it run.
            tokio::time::sleep(std::time::Duration::from_millis(30)).await;
            let in_transaction: i64 = sqlx::query_scalar(
                "SELECT count(*) FROM pg_stat_activity
                 WHERE datname = current_database() AND state LIKE 'idle in transaction%'",
            )
            .fetch_one(&mut observer)
            .await
            .unwrap();
            assert_eq!(
                in_transaction, 0,
                "left in a transaction after {polls} polls"
            );
            let found = store.nearest("m", query, 5, &filter, false).await;
            assert_eq!(found.expect("a search after a drop").hits[0].id, "d-00001");
        }
    }
}
