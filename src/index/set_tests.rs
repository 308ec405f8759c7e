//! `IndexSet` on a corpus with neighbourhood structure: the graph path against the exact
//! path, under inserts, updates and deletes, filters, and many threads at once.

use std::collections::HashMap;
use std::time::{Duration, Instant};

use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use serde_json::json;

use super::*;
use crate::index::tests::cosine;

const DIMS: usize = 48;

/// Enough documents that unfiltered queries take the graph (see `SearchPath::choose`).
const DOCUMENTS: usize = EXACT_BELOW + 5_000;

/// Vectors drawn around a few hundred random centres, as documents on a few hundred topics
/// are: each has true near neighbours, unlike uniformly random vectors, which are nearly
/// orthogonal and have none worth ranking.
struct Corpus {
    rng: StdRng,
    centres: Vec<Vec<f32>>,
}

impl Corpus {
    fn new(seed: u64) -> Self {
        let mut rng = StdRng::seed_from_u64(seed);
        let centres = (0..300).map(|_| gaussian(&mut rng, 1.0)).collect();
        Self { rng, centres }
    }

    /// A vector near a random centre.
    fn document(&mut self) -> Vec<f32> {
        let centre = self.rng.random_range(0..self.centres.len());
        self.near(&self.centres[centre].clone(), 0.35)
    }

    /// A vector at about `spread` from `vector`.
    fn near(&mut self, vector: &[f32], spread: f32) -> Vec<f32> {
        let noise = gaussian(&mut self.rng, spread);
        vector.iter().zip(noise).map(|(x, n)| x + n).collect()
    }
}

/// A vector of unit length in expectation times `scale`, of independent normal components.
fn gaussian(rng: &mut StdRng, scale: f32) -> Vec<f32> {
    (0..DIMS)
        .map(|_| {
            // Box–Muller: two uniforms make one standard normal.
            let (u, v): (f32, f32) = (rng.random_range(f32::EPSILON..1.0), rng.random());
            (-2.0 * u.ln()).sqrt() * (std::f32::consts::TAU * v).cos() * scale
                / (DIMS as f32).sqrt()
        })
        .collect()
}

fn set() -> IndexSet {
    let settings = GraphSettings::default();
    IndexSet::for_models([
        ("m".to_owned(), DIMS, settings),
        ("other".to_owned(), DIMS, settings),
    ])
}

/// Waits until `model`'s graph has taken every change.
fn wait_for_graph(set: &IndexSet, model: &str) {
    let deadline = Instant::now() + Duration::from_secs(120);
    while set.unsynced(model) > 0 {
        assert!(Instant::now() < deadline, "the graph never caught up");
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// Every hit is a live document of `model` scored by its current vector, best first.
fn assert_truthful(hits: &[Hit], live: &HashMap<String, Vec<f32>>, query: &[f32]) {
    for hit in hits {
        let vector = live
            .get(&hit.id)
            .unwrap_or_else(|| panic!("{} is deleted or of another model", hit.id));
        let score = cosine(vector, query);
        assert!(
            (score - f64::from(hit.score)).abs() < 1e-4,
            "{} scored {} but its current vector scores {score}",
            hit.id,
            hit.score
        );
    }
    assert!(hits.windows(2).all(|pair| pair[0].score >= pair[1].score));
}

/// The share of `exact`'s ids that `found` also has.
fn recall(found: &[Hit], exact: &[Hit]) -> f64 {
    let hits = found
        .iter()
        .filter(|hit| exact.iter().any(|truth| truth.id == hit.id))
        .count();
    hits as f64 / exact.len().max(1) as f64
}

/// Fills `m` with `DOCUMENTS` documents, then updates, deletes and adds at random; returns
/// the live documents. `other` holds copies of some of `m`'s vectors under other ids, which
/// would rank first if two models' vectors ever met.
fn churn(set: &IndexSet, corpus: &mut Corpus) -> HashMap<String, Vec<f32>> {
    let mut live = HashMap::new();
    let mut versions = HashMap::new();
    for n in 0..DOCUMENTS {
        let (id, vector) = (format!("d{n}"), corpus.document());
        set.upsert("m", &id, 1, &vector);
        if n % 50 == 0 {
            set.upsert("other", &format!("o{n}"), 1, &vector);
        }
        versions.insert(id.clone(), 1);
        live.insert(id, vector);
    }
    let mut rng = StdRng::seed_from_u64(11);
    for n in 0..6_000 {
        let id = format!("d{}", rng.random_range(0..DOCUMENTS + 1_000));
        match rng.random_range(0..3) {
            0 => {
                set.remove(&id);
                live.remove(&id);
            }
            _ => {
                let version = versions.entry(id.clone()).or_insert(0);
                *version += 1;
                let vector = corpus.document();
                set.upsert("m", &id, *version, &vector);
                live.insert(id, vector);
            }
        }
        if n % 1000 == 0 {
            // Whatever the graph has taken so far, answers are true.
            let query = corpus.document();
            let found = set.search("m", &query, 10, &Filter::default(), false);
            assert_truthful(&found.hits, &live, &query);
        }
    }
    live
}

#[test]
fn the_graph_finds_the_exact_top_10_after_random_writes_and_never_a_wrong_document() {
    let set = set();
    let mut corpus = Corpus::new(7);
    let live = churn(&set, &mut corpus);
    wait_for_graph(&set, "m");
    let mut total = 0.0;
    let queries = 200;
    for _ in 0..queries {
        let document = corpus.document();
        let query = corpus.near(&document, 0.1);
        let found = set.search("m", &query, 10, &Filter::default(), false);
        let exact = set.search("m", &query, 10, &Filter::default(), true);
        assert!(!found.exact && exact.exact);
        assert_truthful(&found.hits, &live, &query);
        assert_eq!(exact.hits.len(), 10);
        total += recall(&found.hits, &exact.hits);
    }
    let recall = total / f64::from(queries);
    assert!(recall >= 0.95, "recall@10 {recall:.3}");
}

#[test]
fn a_filter_returns_only_matches_and_a_selective_one_is_answered_exactly() {
    let set = set();
    let mut corpus = Corpus::new(8);
    let mut live = HashMap::new();
    for n in 0..DOCUMENTS {
        let (id, vector) = (format!("d{n}"), corpus.document());
        let tenant = match n % 10 {
            0 if n % 200 == 0 => "rare",
            0 => "small",
            _ => "large",
        };
        set.upsert("m", &id, 1, &vector);
        set.upsert_metadata(&id, 1, &json!({ "tenant": tenant }));
        live.insert(id, (vector, tenant));
    }
    wait_for_graph(&set, "m");
    let vectors: HashMap<String, Vec<f32>> = live
        .iter()
        .map(|(id, (v, _))| (id.clone(), v.clone()))
        .collect();
    let (mut large_recall, queries) = (0.0, 50);
    for _ in 0..queries {
        let query = corpus.document();
        for tenant in ["rare", "small", "large"] {
            let filter = Filter::parse(&json!({ "tenant": tenant })).unwrap();
            let found = set.search("m", &query, 10, &filter, false);
            let exact = set.search("m", &query, 10, &filter, true);
            assert_truthful(&found.hits, &vectors, &query);
            assert!(found.hits.iter().all(|hit| live[&hit.id].1 == tenant));
            if tenant == "large" {
                assert!(!found.exact, "a filter matching 90% takes the graph");
                large_recall += recall(&found.hits, &exact.hits);
            } else {
                assert!(found.exact, "a filter matching {tenant} is scanned");
                assert_eq!(found, exact);
            }
        }
    }
    let recall = large_recall / f64::from(queries);
    assert!(recall >= 0.95, "filtered recall@10 {recall:.3}");
}

#[test]
fn a_broad_filter_whose_matches_all_lie_away_from_the_query_still_finds_them() {
    let set = set();
    let mut corpus = Corpus::new(12);
    let here = corpus.document();
    let mut matching = HashMap::new();
    // Every document near the query fails the filter and the 80% that pass are elsewhere:
    // filtering the graph's unfiltered nearest nodes would find none of them.
    for n in 0..DOCUMENTS {
        let id = format!("d{n}");
        let (vector, tenant) = if n < DOCUMENTS - EXACT_BELOW {
            (corpus.near(&here, 0.1), "near")
        } else {
            (corpus.document(), "far")
        };
        set.upsert("m", &id, 1, &vector);
        set.upsert_metadata(&id, 1, &json!({ "tenant": tenant }));
        if tenant == "far" {
            matching.insert(id, vector);
        }
    }
    wait_for_graph(&set, "m");
    let filter = Filter::parse(&json!({ "tenant": "far" })).unwrap();
    let (mut total, queries) = (0.0, 20);
    for _ in 0..queries {
        let query = corpus.near(&here, 0.1);
        let found = set.search("m", &query, 10, &filter, false);
        let exact = set.search("m", &query, 10, &filter, true);
        assert!(!found.exact);
        assert_eq!(found.hits.len(), 10, "as many hits as asked for");
        assert_truthful(&found.hits, &matching, &query);
        total += recall(&found.hits, &exact.hits);
    }
    let recall = total / f64::from(queries);
    assert!(recall >= 0.9, "filtered recall@10 {recall:.3}");
}

#[test]
fn more_threads_searching_at_once_than_the_graph_has_slots_all_get_answers() {
    let set = set();
    let mut corpus = Corpus::new(9);
    for n in 0..DOCUMENTS {
        set.upsert("m", &format!("d{n}"), 1, &corpus.document());
    }
    wait_for_graph(&set, "m");
    let queries: Vec<Vec<f32>> = (0..64).map(|_| corpus.document()).collect();
    std::thread::scope(|scope| {
        for query in &queries {
            let set = &set;
            scope.spawn(move || {
                for _ in 0..20 {
                    let found = set.search("m", query, 10, &Filter::default(), false);
                    assert_eq!(found.hits.len(), 10);
                    assert!(!found.exact);
                }
            });
        }
    });
}

#[test]
fn the_path_is_exact_when_asked_small_selective_or_behind_and_the_graph_otherwise() {
    let settings = GraphSettings::default();
    let choose = |rows, unsynced, matching, top_k, exact| {
        SearchPath::choose(rows, unsynced, matching, top_k, exact, settings)
    };
    let big = 1_000_000;
    assert_eq!(choose(big, 0, None, 10, false), SearchPath::Graph);
    assert_eq!(choose(big, 0, None, 10, true), SearchPath::Exact, "asked");
    assert_eq!(
        choose(EXACT_BELOW - 1, 0, None, 10, false),
        SearchPath::Exact
    );
    assert_eq!(choose(EXACT_BELOW, 0, None, 10, false), SearchPath::Graph);
    assert_eq!(
        choose(big, big / 2 + 1, None, 10, false),
        SearchPath::Exact,
        "behind"
    );
    assert_eq!(choose(big, big / 2, None, 10, false), SearchPath::Graph);
    let one_in = FILTER_EXACT_BELOW_ONE_IN;
    assert_eq!(
        choose(big, 0, Some(big / one_in - 1), 10, false),
        SearchPath::Exact
    );
    assert_eq!(
        choose(big, 0, Some(big / one_in), 10, false),
        SearchPath::Graph
    );
    assert_eq!(
        choose(big, 0, Some(EXACT_BELOW - 1), 10, false),
        SearchPath::Exact
    );
    assert_eq!(
        choose(EXACT_BELOW * 2, 0, Some(EXACT_BELOW), 10, false),
        SearchPath::Graph
    );
    let many = big / settings.candidates_per_hit / 2 + 1;
    assert_eq!(
        choose(big, 0, None, many, false),
        SearchPath::Exact,
        "top_k near all"
    );
}

/// Documents by id, each with its version and vector.
type Documents = HashMap<String, (u64, Vec<f32>)>;

/// A start-up under `dir` (see `start`) whose store streams `documents` of model `m` (id,
/// version, vector) in reverse id order, so that a document the saved graph does not know
/// takes a handle it had in the process that saved it.
fn restarted(documents: &Documents, dir: &std::path::Path) -> IndexSet {
    restarted_with(&[("m", documents)], dir)
}

/// A start-up under `dir` whose store streams each model's documents, in reverse id order.
fn restarted_with(models: &[(&str, &Documents)], dir: &std::path::Path) -> IndexSet {
    let settings = GraphSettings::default();
    let mut specs: Vec<_> = models
        .iter()
        .map(|(model, _)| (model.to_string(), DIMS, settings))
        .collect();
    specs.push(("other".to_owned(), DIMS, settings));
    let mut start = super::super::start::Start::new(specs, Some(dir.to_owned()));
    for (model, (_, documents)) in models.iter().enumerate() {
        let mut ids: Vec<&String> = documents.keys().collect();
        ids.sort_by(|a, b| b.cmp(a));
        for id in ids {
            let (version, vector) = &documents[id];
            start.add_vector(model, id, *version, vector).unwrap();
        }
    }
    start.finish()
}

/// A set saving under `dir`, filled with `DOCUMENTS` documents, closed so that it saves.
fn saved(dir: &std::path::Path, corpus: &mut Corpus) -> Documents {
    let set = restarted(&HashMap::new(), dir);
    let mut documents = HashMap::new();
    for n in 0..DOCUMENTS {
        let (id, vector) = (format!("d{n}"), corpus.document());
        set.upsert("m", &id, 1, &vector);
        documents.insert(id, (1, vector));
    }
    wait_for_graph(&set, "m");
    set.close();
    documents
}

fn live(documents: &Documents) -> HashMap<String, Vec<f32>> {
    documents
        .iter()
        .map(|(id, (_, vector))| (id.clone(), vector.clone()))
        .collect()
}

#[test]
fn a_start_without_a_saved_graph_builds_one_from_the_rows() {
    let dir = tempfile::tempdir().unwrap();
    let mut corpus = Corpus::new(14);
    let documents: Documents = (0..DOCUMENTS)
        .map(|n| (format!("d{n}"), (1, corpus.document())))
        .collect();
    let set = restarted(&documents, dir.path());
    assert_eq!(set.unsynced("m"), DOCUMENTS, "every row is for the graph");
    let query = corpus.document();
    let found = set.search("m", &query, 10, &Filter::default(), false);
    assert!(found.exact, "exact until the graph catches up");
    wait_for_graph(&set, "m");
    let found = set.search("m", &query, 10, &Filter::default(), false);
    assert!(!found.exact, "then the graph answers");
    assert_truthful(&found.hits, &live(&documents), &query);
}

#[test]
fn a_saved_graph_is_restored_and_re_adds_what_was_written_after_the_save() {
    let dir = tempfile::tempdir().unwrap();
    let mut corpus = Corpus::new(10);
    let mut documents = saved(dir.path(), &mut corpus);
    // Written after the save, then the process died: the store has them, the file does not.
    for n in 0..500 {
        documents.remove(&format!("d{n}"));
        documents.insert(format!("d{}", n + 500), (2, corpus.document()));
        documents.insert(format!("new{n}"), (1, corpus.document()));
    }
    let set = restarted(&documents, dir.path());
    assert_eq!(
        set.unsynced("m"),
        1_000,
        "only the updated and new ones are added"
    );
    let live = live(&documents);
    wait_for_graph(&set, "m");
    let mut total = 0.0;
    for _ in 0..100 {
        let query = corpus.document();
        let found = set.search("m", &query, 10, &Filter::default(), false);
        assert!(!found.exact);
        assert_truthful(&found.hits, &live, &query);
        let exact = set.search("m", &query, 10, &Filter::default(), true);
        total += recall(&found.hits, &exact.hits);
    }
    assert!(total / 100.0 >= 0.95, "recall@10 {}", total / 100.0);
    let graph = set
        .sizes()
        .into_iter()
        .find(|s| s.model == "m" && s.kind == "hnsw");
    assert_eq!(
        graph.map(|g| g.vectors),
        Some(documents.len()),
        "deleted nodes removed"
    );
}

#[test]
fn a_truncated_corrupt_or_mismatched_file_is_detected_and_rebuilt_while_queries_stay_exact() {
    let dir = tempfile::tempdir().unwrap();
    let mut corpus = Corpus::new(12);
    let documents = saved(dir.path(), &mut corpus);
    let files = Files::new(dir.path(), "m");
    let (graph, nodes) = (dir.path().join("6d.hnsw"), dir.path().join("6d.nodes"));
    let (graph_bytes, nodes_bytes) = (
        std::fs::read(&graph).unwrap(),
        std::fs::read(&nodes).unwrap(),
    );
    let mut flipped = nodes_bytes.clone();
    flipped[nodes_bytes.len() / 2] ^= 1;
    let mut other_graph = graph_bytes.clone();
    other_graph[graph_bytes.len() / 2] ^= 1;
    let damages: [(&str, &std::path::Path, Vec<u8>); 4] = [
        (
            "a truncated graph",
            &graph,
            graph_bytes[..graph_bytes.len() / 2].to_vec(),
        ),
        (
            "a truncated node list",
            &nodes,
            nodes_bytes[..nodes_bytes.len() - 9].to_vec(),
        ),
        ("a corrupt node list", &nodes, flipped),
        ("a graph that is not the listed one", &graph, other_graph),
    ];
    let live = live(&documents);
    for (damage, path, bytes) in damages {
        std::fs::write(&graph, &graph_bytes).unwrap();
        std::fs::write(&nodes, &nodes_bytes).unwrap();
        std::fs::write(path, bytes).unwrap();
        let set = restarted(&documents, dir.path());
        assert_eq!(set.unsynced("m"), documents.len(), "{damage}: rebuilt");
        let query = corpus.document();
        let found = set.search("m", &query, 10, &Filter::default(), false);
        let exact = set.search("m", &query, 10, &Filter::default(), true);
        assert!(found.exact, "{damage}: answered exactly while rebuilding");
        assert_eq!(found, exact, "{damage}");
        assert_truthful(&found.hits, &live, &query);
        drop(set);
        files.discard();
    }
}

/// Two graphs saved by processes that numbered the documents differently: the first list's
/// documents keep their handles, the second graph is renumbered, and both stay truthful.
#[test]
fn graphs_saved_with_conflicting_handles_are_renumbered_and_stay_truthful() {
    let dir = tempfile::tempdir().unwrap();
    let mut corpus = Corpus::new(13);
    let first = saved(dir.path(), &mut corpus);
    let kept = tempfile::tempdir().unwrap();
    for file in ["6d.hnsw", "6d.nodes"] {
        std::fs::rename(dir.path().join(file), kept.path().join(file)).unwrap();
    }
    // A second process, with no graph of `m` saved, numbers `e…` from 0 and saves `n`.
    let second: Documents = (0..DOCUMENTS)
        .map(|n| (format!("e{n}"), (1, corpus.document())))
        .collect();
    let set = restarted_with(&[("n", &HashMap::new())], dir.path());
    for (id, (version, vector)) in &second {
        set.upsert("n", id, *version, vector);
    }
    wait_for_graph(&set, "n");
    set.close();
    drop(set);
    for file in ["6d.hnsw", "6d.nodes"] {
        std::fs::rename(kept.path().join(file), dir.path().join(file)).unwrap();
    }
    let set = restarted_with(&[("m", &first), ("n", &second)], dir.path());
    for (model, documents) in [("m", &first), ("n", &second)] {
        assert_eq!(set.unsynced(model), 0, "{model}: every node restored");
        let live = live(documents);
        let mut total = 0.0;
        for _ in 0..50 {
            let query = corpus.document();
            let found = set.search(model, &query, 10, &Filter::default(), false);
            assert!(!found.exact, "{model}: the graph answers");
            assert_truthful(&found.hits, &live, &query);
            let exact = set.search(model, &query, 10, &Filter::default(), true);
            total += recall(&found.hits, &exact.hits);
        }
        assert!(total / 50.0 >= 0.95, "{model}: recall@10 {}", total / 50.0);
    }
}

/// usearch's memory accounting crashed (SIGSEGV) when read while an add ran; sizes and
/// searches must be safe at any moment of a feed, updates and removals included.
#[test]
fn sizes_and_searches_are_safe_while_the_graph_is_fed() {
    let set = set();
    let mut corpus = Corpus::new(13);
    let stop = std::sync::atomic::AtomicBool::new(false);
    let queries: Vec<Vec<f32>> = (0..2).map(|_| corpus.document()).collect();
    std::thread::scope(|scope| {
        for query in &queries {
            let (set, stop) = (&set, &stop);
            scope.spawn(move || {
                while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                    std::hint::black_box(set.sizes());
                    let found = set.search("m", query, 10, &Filter::default(), false);
                    assert!(found.hits.windows(2).all(|p| p[0].score >= p[1].score));
                    std::thread::sleep(Duration::from_millis(20));
                }
            });
        }
        for n in 0..DOCUMENTS {
            set.upsert(
                "m",
                &format!("d{}", n % 20_000),
                1 + n as u64 / 20_000,
                &corpus.document(),
            );
            if n % 7 == 0 {
                set.remove(&format!("d{}", n / 2));
            }
        }
        wait_for_graph(&set, "m");
        stop.store(true, std::sync::atomic::Ordering::Relaxed);
    });
}

/// A kept vector moves to the new version unchanged: the graph is not fed it again, a late
/// write of the old version no longer replaces it, and only a row at the expected version
/// moves.
#[test]
fn a_restamped_row_keeps_its_vector_and_its_graph_entry() {
    let set = set();
    let mut corpus = Corpus::new(7);
    let (kept, other) = (corpus.document(), corpus.document());
    set.upsert("m", "a", 1, &kept);
    wait_for_graph(&set, "m");
    assert!(set.restamp("m", "a", 1, 2));
    assert_eq!(set.unsynced("m"), 0, "the graph holds the same vector");
    assert!(!set.restamp("m", "a", 1, 3), "no longer at version 1");
    assert!(!set.restamp("other", "a", 2, 3), "no row in that model");
    assert!(!set.restamp("m", "missing", 1, 2));
    set.upsert("m", "a", 1, &other);
    let hits = set.search("m", &kept, 1, &Filter::default(), true).hits;
    assert_eq!(hits[0].id, "a");
    assert!((hits[0].score - 1.0).abs() < 1e-5, "{hits:?}");
}

/// A model whose vectors were all deleted after a switch gives its memory back: its rows are
/// gone, its graph is emptied and released, and the other model is untouched.
#[test]
fn removing_a_models_vectors_frees_its_rows_and_graph_and_leaves_the_other_model() {
    let set = set();
    let mut corpus = Corpus::new(11);
    let ids: Vec<String> = (0..3000).map(|i| format!("d{i:05}")).collect();
    for id in &ids {
        set.upsert("m", id, 1, &corpus.document());
        set.upsert("other", id, 1, &corpus.document());
    }
    wait_for_graph(&set, "m");
    let size = |model: &str, kind: &str| {
        set.sizes()
            .into_iter()
            .find(|s| s.model == model && s.kind == kind)
            .expect("a size")
    };
    let counted = Instant::now() + Duration::from_secs(30);
    while size("m", "hnsw").bytes == 0 {
        assert!(
            Instant::now() < counted,
            "the graph's bytes were never counted"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
    let graph_before = size("m", "hnsw").bytes;
    for batch in ids.chunks(1000) {
        set.remove_vectors("m", batch);
    }
    set.compact("m");
    wait_for_graph(&set, "m");
    let deadline = Instant::now() + Duration::from_secs(30);
    while size("m", "hnsw").vectors > 0 {
        assert!(Instant::now() < deadline, "the graph kept its nodes");
        std::thread::sleep(Duration::from_millis(20));
    }
    assert_eq!(
        (size("m", "exact").vectors, size("m", "exact").bytes),
        (0, 0)
    );
    assert!(
        size("m", "hnsw").bytes < graph_before / 4,
        "the emptied graph still holds {} of {graph_before} bytes",
        size("m", "hnsw").bytes
    );
    assert_eq!(size("other", "exact").vectors, ids.len());
    let query = corpus.document();
    assert!(
        set.search("m", &query, 5, &Filter::default(), false)
            .hits
            .is_empty()
    );
    assert_eq!(
        set.search("other", &query, 5, &Filter::default(), false)
            .hits
            .len(),
        5
    );
    let back: Vec<Vec<f32>> = (0..100).map(|_| corpus.document()).collect();
    for (id, vector) in ids.iter().zip(&back) {
        set.upsert("m", id, 2, vector);
    }
    wait_for_graph(&set, "m");
    assert_eq!(
        size("m", "hnsw").vectors,
        back.len(),
        "the emptied graph takes nodes again"
    );
    let nearest = set.search("m", &back[7], 1, &Filter::default(), false);
    assert_eq!(nearest.hits[0].id, ids[7]);
}
