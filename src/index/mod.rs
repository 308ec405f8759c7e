//! In-memory vector indexes: one exact, brute-force `VectorIndex` per model, and the `IndexSet`
//! that holds one for every registered model.
//!
//! The store is the source of truth; indexes are rebuilt from it at start-up and follow each
//! commit. A scan of contiguous memory is exact and fast enough for the corpora this service
//! targets, and needs no tuning or rebuilds while a migration runs.

pub mod filter;
mod metadata;
mod set;

use std::cmp::{Ordering, Reverse};
use std::collections::{BinaryHeap, HashMap};

pub use set::{IndexSet, IndexSize};

/// Why the index refused a vector or a query.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum IndexError {
    /// The vector was made by another model, or the provider broke its promise of dimensions.
    #[error("expected a vector of {expected} dimensions, got {got}")]
    DimensionMismatch { expected: usize, got: usize },
}

/// One search result: a document and its cosine similarity to the query.
#[derive(Debug, Clone, PartialEq)]
pub struct Hit {
    /// The document's id.
    pub id: String,
    /// The cosine: 1 for the query's direction, about 0 for unrelated, -1 for the opposite.
    pub score: f32,
}

/// The vectors of one model, searched exactly by cosine similarity.
///
/// Vectors are normalised on the way in, so a score is a cosine whatever the provider returned;
/// a vector that cannot be normalised (all zeros, or not finite) is stored as zeros and scores 0
/// against every query, so one bad vector can never rank first or poison a sort.
///
/// Each row remembers the document version it was computed from, so that a late write of an
/// older version never overwrites a newer vector.
///
/// No locking of its own: the caller (`IndexSet`) keeps each index behind a `std::sync::RwLock`,
/// so queries share it and writers take it briefly.
#[derive(Debug, Clone)]
pub struct VectorIndex {
    dims: usize,
    /// Row-major, `dims` floats per row, row `i` belonging to `ids[i]`; contiguous so a search
    /// is one linear scan that the compiler can vectorise.
    vectors: Vec<f32>,
    ids: Vec<String>,
    versions: Vec<u64>,
    /// The row of each id; kept in step with `ids` by every method.
    rows: HashMap<String, usize>,
}

impl VectorIndex {
    /// An empty index for a model of `dims` dimensions.
    pub fn new(dims: usize) -> Self {
        Self {
            dims,
            vectors: Vec::new(),
            ids: Vec::new(),
            versions: Vec::new(),
            rows: HashMap::new(),
        }
    }

    /// The length every vector and query must have.
    pub fn dims(&self) -> usize {
        self.dims
    }

    /// The number of documents indexed.
    pub fn len(&self) -> usize {
        self.ids.len()
    }

    /// Whether no document is indexed.
    pub fn is_empty(&self) -> bool {
        self.ids.is_empty()
    }

    /// Stores `vector` as the vector of `id` at `version`. `Ok(false)` when the index already
    /// holds a newer version of `id` (the write is stale and ignored); an equal version
    /// replaces, so re-applying a commit is harmless. A vector of other than `dims` values is
    /// refused with `DimensionMismatch` and changes nothing.
    pub fn upsert(&mut self, id: &str, version: u64, vector: &[f32]) -> Result<bool, IndexError> {
        self.check_dims(vector.len())?;
        let row = match self.rows.get(id) {
            Some(&row) if self.versions[row] > version => return Ok(false),
            Some(&row) => {
                self.versions[row] = version;
                row
            }
            None => self.push_row(id, version),
        };
        let dims = self.dims;
        normalise_into(vector, &mut self.vectors[row * dims..(row + 1) * dims]);
        Ok(true)
    }

    /// Removes `id`; `false` when it was not indexed. The last row moves into the hole, so
    /// storage stays contiguous and removal costs one row copy.
    pub fn remove(&mut self, id: &str) -> bool {
        let Some(row) = self.rows.remove(id) else {
            return false;
        };
        let last = self.ids.len() - 1;
        let dims = self.dims;
        if row != last {
            self.vectors
                .copy_within(last * dims..(last + 1) * dims, row * dims);
            if let Some(moved) = self.rows.get_mut(&self.ids[last]) {
                *moved = row;
            }
        }
        self.vectors.truncate(last * dims);
        self.ids.swap_remove(row);
        self.versions.swap_remove(row);
        true
    }

    /// The document version the vector of `id` was computed from.
    pub fn version(&self, id: &str) -> Option<u64> {
        self.rows.get(id).map(|&row| self.versions[row])
    }

    /// The `top_k` documents most similar to `query`, best first; equal scores are ordered by
    /// id so that results are deterministic. Fewer when the index holds fewer. A query of
    /// other than `dims` values is refused with `DimensionMismatch`.
    pub fn search(&self, query: &[f32], top_k: usize) -> Result<Vec<Hit>, IndexError> {
        let unit_query = self.unit_query(query)?;
        Ok(best_of(
            self.rows_of_vectors().zip(&self.ids),
            &unit_query,
            top_k,
        ))
    }

    /// As [`search`](Self::search), over the documents of `ids` only (those not indexed are
    /// passed over): the exact answer of a filtered query.
    pub fn search_among(
        &self,
        query: &[f32],
        top_k: usize,
        ids: &[&str],
    ) -> Result<Vec<Hit>, IndexError> {
        let unit_query = self.unit_query(query)?;
        let dims = self.dims;
        let rows = ids.iter().filter_map(|id| {
            let row = *self.rows.get(*id)?;
            Some((&self.vectors[row * dims..(row + 1) * dims], &self.ids[row]))
        });
        Ok(best_of(rows, &unit_query, top_k))
    }

    /// `query` scaled to length one, once its dimensions are checked.
    fn unit_query(&self, query: &[f32]) -> Result<Vec<f32>, IndexError> {
        self.check_dims(query.len())?;
        let mut unit_query = vec![0.0; self.dims];
        normalise_into(query, &mut unit_query);
        Ok(unit_query)
    }

    /// The bytes of stored vector data (not ids, the id map or spare capacity): what grows
    /// with dimensions times documents, for comparing models in benchmarks.
    pub fn bytes(&self) -> usize {
        self.vectors.len() * size_of::<f32>()
    }

    fn check_dims(&self, got: usize) -> Result<(), IndexError> {
        if got == self.dims {
            Ok(())
        } else {
            Err(IndexError::DimensionMismatch {
                expected: self.dims,
                got,
            })
        }
    }

    /// Appends a zeroed row for `id` and returns its number.
    fn push_row(&mut self, id: &str, version: u64) -> usize {
        let row = self.ids.len();
        self.rows.insert(id.to_owned(), row);
        self.ids.push(id.to_owned());
        self.versions.push(version);
        self.vectors.resize(self.vectors.len() + self.dims, 0.0);
        row
    }

    /// Every row's vector, in row order.
    fn rows_of_vectors(&self) -> impl Iterator<Item = &[f32]> {
        // `chunks_exact(0)` would panic; in a zero-dimensional index every row is empty.
        let empty_rows = if self.dims == 0 { self.ids.len() } else { 0 };
        let rows = self.vectors.chunks_exact(self.dims.max(1));
        rows.chain(std::iter::repeat_n(&[][..], empty_rows))
    }
}

/// The `top_k` of `rows` most similar to `unit_query`, best first, equal scores by id.
fn best_of<'a>(
    rows: impl Iterator<Item = (&'a [f32], &'a String)>,
    unit_query: &[f32],
    top_k: usize,
) -> Vec<Hit> {
    if top_k == 0 {
        return Vec::new();
    }
    // A min-heap of the best `top_k` so far: its top is the one to evict next.
    let mut best = BinaryHeap::with_capacity(top_k.min(1024));
    for (row, id) in rows {
        let candidate = Candidate {
            score: dot(row, unit_query),
            id,
        };
        if best.len() < top_k {
            best.push(Reverse(candidate));
        } else if let Some(mut worst) = best.peek_mut()
            && candidate > worst.0
        {
            *worst = Reverse(candidate);
        }
    }
    best.into_sorted_vec()
        .into_iter()
        .map(|Reverse(c)| c.into_hit())
        .collect()
}

/// A scored row during a search, ordered so that the better candidate is the greater one.
struct Candidate<'a> {
    score: f32,
    id: &'a str,
}

impl Candidate<'_> {
    fn into_hit(self) -> Hit {
        Hit {
            id: self.id.to_owned(),
            score: self.score,
        }
    }
}

impl Ord for Candidate<'_> {
    fn cmp(&self, other: &Self) -> Ordering {
        // On equal scores the smaller id is the better candidate.
        self.score
            .total_cmp(&other.score)
            .then_with(|| other.id.cmp(self.id))
    }
}

impl PartialOrd for Candidate<'_> {
    fn partial_cmp(&self, other: &Self) -> Option<Ordering> {
        Some(self.cmp(other))
    }
}

impl PartialEq for Candidate<'_> {
    fn eq(&self, other: &Self) -> bool {
        self.cmp(other) == Ordering::Equal
    }
}

impl Eq for Candidate<'_> {}

/// Writes `vector` scaled to unit length into `out`, or zeros when it has no direction (all
/// zeros) or is not finite, so that every stored and query vector is finite. The norm is taken
/// in f64 so that large but finite components do not overflow it.
fn normalise_into(vector: &[f32], out: &mut [f32]) {
    let norm = vector
        .iter()
        .map(|&x| f64::from(x).powi(2))
        .sum::<f64>()
        .sqrt();
    if !(norm.is_finite() && norm > 0.0) {
        out.fill(0.0);
        return;
    }
    for (o, &x) in out.iter_mut().zip(vector) {
        *o = (f64::from(x) / norm) as f32;
    }
}

/// The dot product of two equally long slices. Eight independent accumulators let the
/// compiler keep a SIMD register of partial sums instead of one serial chain of additions.
fn dot(a: &[f32], b: &[f32]) -> f32 {
    let (a8, b8) = (a.chunks_exact(8), b.chunks_exact(8));
    let tail: f32 = a8
        .remainder()
        .iter()
        .zip(b8.remainder())
        .map(|(x, y)| x * y)
        .sum();
    let mut sums = [0.0f32; 8];
    for (x, y) in a8.zip(b8) {
        for ((sum, x), y) in sums.iter_mut().zip(x).zip(y) {
            *sum += x * y;
        }
    }
    sums.iter().sum::<f32>() + tail
}

#[cfg(test)]
mod tests;
