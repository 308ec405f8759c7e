//! `VectorIndex` against its contract, and against a naive model under random operations.

use std::collections::HashMap;
use std::ops::Deref;

use proptest::prelude::*;

use super::handles::Handles;
use super::*;

/// A `VectorIndex` addressed by id as `IndexSet` addresses it: a handle is given on the first
/// write and freed on removal.
struct Named {
    index: VectorIndex,
    handles: Handles,
}

impl Named {
    fn new(dims: usize) -> Self {
        Self {
            index: VectorIndex::new(dims),
            handles: Handles::default(),
        }
    }

    fn upsert(&mut self, id: &str, version: u64, vector: &[f32]) -> Result<bool, IndexError> {
        let (handle, id) = self.handles.get_or_insert(id);
        let upserted = self.index.upsert(handle, &id, version, vector);
        if self.index.version(handle).is_none() {
            self.handles.release(&id);
        }
        upserted
    }

    fn remove(&mut self, id: &str) -> bool {
        let Some(handle) = self.handles.get(id) else {
            return false;
        };
        self.handles.release(id);
        self.index.remove(handle)
    }

    fn version(&self, id: &str) -> Option<u64> {
        self.index.version(self.handles.get(id)?)
    }

    /// The handles of those of `ids` that have one.
    fn handles_of<'a>(&self, ids: impl IntoIterator<Item = &'a str>) -> RoaringBitmap {
        ids.into_iter()
            .filter_map(|id| self.handles.get(id))
            .collect()
    }
}

impl Deref for Named {
    type Target = VectorIndex;

    fn deref(&self) -> &VectorIndex {
        &self.index
    }
}

/// The cosine of two vectors, from scratch in f64: what every score is checked against.
pub(super) fn cosine(a: &[f32], b: &[f32]) -> f64 {
    let dot = |a: &[f32], b: &[f32]| -> f64 {
        a.iter()
            .zip(b)
            .map(|(x, y)| f64::from(*x) * f64::from(*y))
            .sum()
    };
    dot(a, b) / (dot(a, a) * dot(b, b)).sqrt()
}

fn ids(hits: &[Hit]) -> Vec<&str> {
    hits.iter().map(|h| h.id.as_str()).collect()
}

/// A 3-dimensional index holding `a` along x, `b` along y and `c` between x and y.
fn abc() -> Named {
    let mut index = Named::new(3);
    index.upsert("a", 1, &[1.0, 0.0, 0.0]).unwrap();
    index.upsert("b", 1, &[0.0, 1.0, 0.0]).unwrap();
    index.upsert("c", 1, &[1.0, 1.0, 0.0]).unwrap();
    index
}

#[test]
fn a_new_index_is_empty() {
    let index = Named::new(4);
    assert_eq!(
        (index.dims(), index.len(), index.is_empty(), index.bytes()),
        (4, 0, true, 0)
    );
    assert_eq!(index.search(&[1.0, 0.0, 0.0, 0.0], 5), Ok(vec![]));
}

#[test]
fn upsert_inserts_and_search_finds_by_cosine() {
    let index = abc();
    assert_eq!((index.len(), index.bytes()), (3, 3 * 3 * 4));
    let hits = index.search(&[2.0, 0.0, 0.0], 3).unwrap();
    assert_eq!(ids(&hits), ["a", "c", "b"]);
    let scores: Vec<f32> = hits.iter().map(|h| h.score).collect();
    let expected = [1.0, std::f32::consts::FRAC_1_SQRT_2, 0.0];
    for (score, expected) in scores.iter().zip(expected) {
        assert!((score - expected).abs() < 1e-6, "{scores:?}");
    }
}

#[test]
fn upsert_of_an_equal_or_newer_version_replaces() {
    let mut index = abc();
    assert_eq!(index.upsert("a", 1, &[0.0, 0.0, 1.0]), Ok(true));
    assert_eq!(index.upsert("a", 2, &[0.0, 1.0, 0.0]), Ok(true));
    assert_eq!((index.len(), index.version("a")), (3, Some(2)));
    let hits = index.search(&[0.0, 1.0, 0.0], 2).unwrap();
    assert_eq!(ids(&hits), ["a", "b"], "tie at 1.0 broken by id");
}

#[test]
fn upsert_of_an_older_version_is_ignored() {
    let mut index = abc();
    index.upsert("a", 5, &[1.0, 0.0, 0.0]).unwrap();
    assert_eq!(index.upsert("a", 4, &[0.0, 0.0, 1.0]), Ok(false));
    assert_eq!(index.version("a"), Some(5));
    assert_eq!(ids(&index.search(&[1.0, 0.0, 0.0], 1).unwrap()), ["a"]);
}

#[test]
fn remove_moves_the_last_row_and_keeps_every_other_id_findable() {
    let mut index = abc();
    assert!(index.remove("a"));
    assert!(!index.remove("a"));
    assert_eq!(
        (index.len(), index.version("a"), index.bytes()),
        (2, None, 2 * 3 * 4)
    );
    assert_eq!(ids(&index.search(&[1.0, 1.0, 0.0], 1).unwrap()), ["c"]);
    assert_eq!(ids(&index.search(&[0.0, 1.0, 0.0], 1).unwrap()), ["b"]);
    index.upsert("c", 2, &[0.0, 0.0, 1.0]).unwrap();
    assert_eq!(
        ids(&index.search(&[0.0, 0.0, 1.0], 1).unwrap()),
        ["c"],
        "moved row updates"
    );
    assert!(index.remove("c") && index.remove("b") && index.is_empty());
}

#[test]
fn search_agrees_with_a_full_sort() {
    let vector = |seed: usize| -> Vec<f32> {
        (0..19)
            .map(|d| (((seed * 7 + d * 13) % 17) as f32 - 8.0) / 8.0)
            .collect()
    };
    let mut index = Named::new(19);
    let query = vector(1000);
    let mut sorted = Vec::new();
    for n in 0..60 {
        let id = format!("doc-{n:02}");
        index.upsert(&id, 1, &vector(n)).unwrap();
        sorted.push((cosine(&vector(n), &query), id));
    }
    sorted.sort_by(|a, b| b.0.total_cmp(&a.0).then_with(|| a.1.cmp(&b.1)));
    for top_k in [1, 5, 59, 60, 61] {
        let hits = index.search(&query, top_k).unwrap();
        let expected = &sorted[..top_k.min(60)];
        assert_eq!(
            ids(&hits),
            expected
                .iter()
                .map(|(_, id)| id.as_str())
                .collect::<Vec<_>>()
        );
        for (hit, (score, _)) in hits.iter().zip(expected) {
            assert!(
                (f64::from(hit.score) - score).abs() < 1e-5,
                "{hit:?} vs {score}"
            );
        }
    }
}

#[test]
fn top_k_zero_finds_nothing_and_a_large_top_k_finds_everything() {
    let index = abc();
    assert_eq!(index.search(&[1.0, 0.0, 0.0], 0), Ok(vec![]));
    assert_eq!(index.search(&[1.0, 0.0, 0.0], usize::MAX).unwrap().len(), 3);
}

#[test]
fn vectors_and_queries_of_the_wrong_length_are_refused() {
    let mut index = abc();
    let mismatch = |got| IndexError::DimensionMismatch { expected: 3, got };
    assert_eq!(index.upsert("d", 1, &[1.0, 0.0]), Err(mismatch(2)));
    assert_eq!(index.search(&[1.0, 0.0, 0.0, 0.0], 1), Err(mismatch(4)));
    assert_eq!((index.len(), index.version("d")), (3, None));
}

#[test]
fn vectors_without_a_direction_score_zero_and_never_poison_the_order() {
    let mut index = abc();
    index.upsert("nan", 1, &[f32::NAN, 1.0, 0.0]).unwrap();
    index.upsert("zero", 1, &[0.0, 0.0, 0.0]).unwrap();
    let hits = index.search(&[1.0, 0.0, 0.0], 5).unwrap();
    assert_eq!(ids(&hits), ["a", "c", "b", "nan", "zero"]);
    assert!(hits.iter().all(|h| h.score.is_finite()));
    let blind = index.search(&[0.0, 0.0, 0.0], 2).unwrap();
    assert_eq!(
        blind,
        [
            Hit {
                id: "a".into(),
                score: 0.0
            },
            Hit {
                id: "b".into(),
                score: 0.0
            }
        ]
    );
}

#[test]
fn large_components_are_normalised_without_overflow() {
    let mut index = Named::new(2);
    index.upsert("big", 1, &[3e30, 4e30]).unwrap();
    let hits = index.search(&[3e30, 4e30], 1).unwrap();
    assert!((hits[0].score - 1.0).abs() < 1e-6, "{hits:?}");
}

#[test]
fn a_zero_dimensional_index_does_not_panic() {
    let mut index = Named::new(0);
    index.upsert("a", 1, &[]).unwrap();
    index.upsert("b", 1, &[]).unwrap();
    assert_eq!(ids(&index.search(&[], 5).unwrap()), ["a", "b"]);
    assert!(index.remove("a"));
    assert_eq!(ids(&index.search(&[], 5).unwrap()), ["b"]);
}

#[test]
fn dot_matches_a_plain_sum_at_every_length() {
    for len in 0..40 {
        let a: Vec<f32> = (0..len).map(|i| i as f32 * 0.5 - 3.0).collect();
        let b: Vec<f32> = (0..len).map(|i| 1.0 - i as f32 * 0.25).collect();
        let plain: f64 = a
            .iter()
            .zip(&b)
            .map(|(x, y)| f64::from(*x) * f64::from(*y))
            .sum();
        assert!(
            (f64::from(dot(&a, &b)) - plain).abs() < 1e-3,
            "length {len}"
        );
    }
}

const DIMS: usize = 5;

#[derive(Debug, Clone)]
enum Op {
    Upsert {
        id: u8,
        version: u64,
        vector: Vec<f32>,
    },
    Remove {
        id: u8,
    },
}

fn op() -> impl Strategy<Value = Op> {
    let vector = proptest::collection::vec(-4i8..=4, DIMS)
        .prop_map(|v| v.into_iter().map(f32::from).collect());
    // Few ids and versions, so that replacements, stale writes and removals are frequent.
    let upsert = (0u8..12, 0u64..4, vector);
    prop_oneof![
        3 => upsert.prop_map(|(id, version, vector)| Op::Upsert { id, version, vector }),
        1 => (0u8..12).prop_map(|id| Op::Remove { id }),
    ]
}

/// What the index must behave like: a map from id to its newest version and raw vector,
/// scored by a cosine computed from scratch in f64.
#[derive(Default)]
struct Naive(HashMap<String, (u64, Vec<f32>)>);

impl Naive {
    /// Applies `op` as the index must; whether it changed anything: an upsert not older than
    /// the stored version, a removal of a known id (what the index's own calls return).
    fn apply(&mut self, op: &Op) -> bool {
        match op {
            Op::Upsert {
                id,
                version,
                vector,
            } => {
                let entry = self
                    .0
                    .entry(id.to_string())
                    .or_insert((*version, vector.clone()));
                let stored = entry.0 <= *version;
                if stored {
                    *entry = (*version, vector.clone());
                }
                stored
            }
            Op::Remove { id } => self.0.remove(&id.to_string()).is_some(),
        }
    }

    fn score(&self, id: &str, query: &[f32]) -> Option<f64> {
        let (_, vector) = self.0.get(id)?;
        let norm = |v: &[f32]| v.iter().map(|x| f64::from(*x).powi(2)).sum::<f64>().sqrt();
        let (nv, nq) = (norm(vector), norm(query));
        if nv == 0.0 || nq == 0.0 {
            return Some(0.0);
        }
        let dot: f64 = vector
            .iter()
            .zip(query)
            .map(|(x, y)| f64::from(*x) * f64::from(*y))
            .sum();
        Some(dot / (nv * nq))
    }

    /// All scores, best first.
    fn ranking(&self, query: &[f32]) -> Vec<f64> {
        self.ranking_among(query, |_| true)
    }

    /// The scores of the ids `keep` lets through, best first.
    fn ranking_among(&self, query: &[f32], keep: impl Fn(&str) -> bool) -> Vec<f64> {
        let mut scores: Vec<f64> = self
            .0
            .keys()
            .filter(|id| keep(id))
            .filter_map(|id| self.score(id, query))
            .collect();
        scores.sort_by(|a, b| b.total_cmp(a));
        scores
    }
}

/// `ops` applied to a fresh index and to the naive model, which must agree on every answer.
fn replay(ops: &[Op]) -> Result<(Named, Naive), TestCaseError> {
    let (mut index, mut naive) = (Named::new(DIMS), Naive::default());
    for op in ops {
        let applied = match op {
            Op::Upsert {
                id,
                version,
                vector,
            } => index.upsert(&id.to_string(), *version, vector),
            Op::Remove { id } => Ok(index.remove(&id.to_string())),
        };
        prop_assert_eq!(applied, Ok(naive.apply(op)), "{:?}", op);
    }
    Ok((index, naive))
}

/// `hits` are the best `top_k` of `ranking` (scores within 1e-5, each its own id's naive
/// score), ordered by score and then id.
fn assert_best(
    hits: &[Hit],
    ranking: &[f64],
    naive: &Naive,
    query: &[f32],
    top_k: usize,
) -> Result<(), TestCaseError> {
    prop_assert_eq!(hits.len(), top_k.min(ranking.len()));
    for (hit, expected) in hits.iter().zip(ranking) {
        let own = naive.score(&hit.id, query);
        prop_assert!(
            own.is_some_and(|s| (s - f64::from(hit.score)).abs() < 1e-5),
            "{hit:?}"
        );
        prop_assert!(
            (expected - f64::from(hit.score)).abs() < 1e-5,
            "{hit:?} vs {expected}"
        );
    }
    for pair in hits.windows(2) {
        let ordered = pair[0].score > pair[1].score
            || (pair[0].score == pair[1].score && pair[0].id < pair[1].id);
        prop_assert!(ordered, "{pair:?}");
    }
    Ok(())
}

proptest! {
    /// The index's answer equals the naive one: the same number of hits, each hit's score is
    /// the naive score of its id, and the i-th score is the naive i-th best score (all within
    /// 1e-5). Ids may differ from a naive sort only between scores that tie up to rounding.
    #[test]
    fn search_matches_a_naive_model(
        ops in proptest::collection::vec(op(), 0..60),
        query in proptest::collection::vec(-4i8..=4, DIMS),
        top_k in 0usize..15,
    ) {
        let query: Vec<f32> = query.into_iter().map(f32::from).collect();
        let (index, naive) = replay(&ops)?;
        prop_assert_eq!(index.len(), naive.0.len());
        for (id, (version, _)) in &naive.0 {
            prop_assert_eq!(index.version(id), Some(*version));
        }
        let hits = index.search(&query, top_k).unwrap();
        assert_best(&hits, &naive.ranking(&query), &naive, &query, top_k)?;
    }

    /// A search among some ids (some of them never indexed or removed) is the naive ranking
    /// of those ids alone: nothing outside them, nothing missing.
    #[test]
    fn a_search_among_ids_is_the_naive_ranking_of_those_ids(
        ops in proptest::collection::vec(op(), 0..60),
        among in proptest::collection::btree_set(0u8..16, 0..16),
        query in proptest::collection::vec(-4i8..=4, DIMS),
        top_k in 0usize..15,
    ) {
        let query: Vec<f32> = query.into_iter().map(f32::from).collect();
        let (index, naive) = replay(&ops)?;
        let among: Vec<String> = among.iter().map(u8::to_string).collect();
        let ids: Vec<&str> = among.iter().map(String::as_str).collect();
        // Handles of no indexed document are passed over.
        let mut handles = index.handles_of(ids.iter().copied());
        handles.insert_range(1000..1010);
        let hits = index.search_among(&query, top_k, &handles).unwrap();
        for hit in &hits {
            prop_assert!(ids.contains(&hit.id.as_str()), "{hit:?} is not among {ids:?}");
        }
        let ranking = naive.ranking_among(&query, |id| ids.contains(&id));
        assert_best(&hits, &ranking, &naive, &query, top_k)?;
    }
}
