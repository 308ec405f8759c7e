//! In-memory vector indexes. Per model, `VectorIndex` keeps every vector exactly, as f32 rows
//! that every score is computed from, and a `graph::Graph` (usearch HNSW, i8) proposes
//! candidates once a model is large enough that scanning every row is slow; `IndexSet` holds
//! both for every registered model, with the shared document `handles` and the metadata
//! postings that filters draw on.
//!
//! The store is the source of truth; indexes are rebuilt from it at start-up and follow each
//! commit. The rows follow synchronously; each graph follows in the background and, until it
//! catches up, the rows it lacks are scanned exactly, so a query never misses a write it
//! could see in the rows.

pub mod filter;
mod graph;
mod handles;
mod metadata;
mod persist;
mod set;
mod start;

use std::cmp::{Ordering, Reverse};
use std::collections::BinaryHeap;
use std::sync::Arc;

use foldhash::HashMap;
use roaring::RoaringBitmap;

pub use graph::{GraphSettings, Quantization};
pub use set::{EXACT_BELOW, FILTER_EXACT_BELOW_ONE_IN, Found, IndexSet, IndexSize, SearchPath};

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

/// The vectors of one model, searched exactly by cosine similarity, and the changes its
/// approximate graph has not caught up with yet.
///
/// Vectors are normalised on the way in, so a score is a cosine whatever the provider returned;
/// a vector that cannot be normalised (all zeros, or not finite) is stored as zeros and scores 0
/// against every query, so one bad vector can never rank first or poison a sort.
///
/// Each row remembers the document version it was computed from, so that a late write of an
/// older version never overwrites a newer vector. Documents are named by their handles (see
/// `handles`); the id is kept beside each row for answers and for ordering ties.
///
/// These rows are the truth for every score: a graph only proposes candidates, which are
/// scored here, so a graph that lags behind, or holds a document's older vector, can make a
/// query miss a neighbour but never report a wrong score, a deleted document or a stale one.
/// What the graph has not caught up with is `unsynced`, and every approximate search also
/// scans those rows exactly.
///
/// No locking of its own: the caller (`IndexSet`) keeps each index behind a `std::sync::RwLock`,
/// so queries share it and writers take it briefly.
#[derive(Debug, Clone)]
pub struct VectorIndex {
    dims: usize,
    /// Row-major, `dims` floats per row; contiguous so a search is one linear scan that the
    /// compiler can vectorise.
    vectors: Vec<f32>,
    /// By row: the document's handle, id and version.
    handles: Vec<u32>,
    ids: Vec<Arc<str>>,
    versions: Vec<u64>,
    /// By handle: the document's row, or `NO_ROW`; kept in step with the rows by every method.
    rows: Vec<u32>,
    /// The documents changed since the graph last took them, each with the stamp of its latest
    /// change, so the graph's writer can tell whether what it copied is still the latest.
    unsynced: HashMap<u32, u64>,
    stamps: u64,
}

/// In `VectorIndex::rows`: the handle has no row in this index.
const NO_ROW: u32 = u32::MAX;

/// A change of one document that the graph has not taken yet: its vector as it is now, or
/// `None` once it is removed.
#[derive(Debug, Clone, PartialEq)]
pub struct Change {
    pub handle: u32,
    pub stamp: u64,
    pub vector: Option<Vec<f32>>,
}

impl VectorIndex {
    /// An empty index for a model of `dims` dimensions.
    pub fn new(dims: usize) -> Self {
        Self {
            dims,
            vectors: Vec::new(),
            handles: Vec::new(),
            ids: Vec::new(),
            versions: Vec::new(),
            rows: Vec::new(),
            unsynced: HashMap::default(),
            stamps: 0,
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

    /// Stores `vector` as the vector of document `handle` (`id`) at `version`. `Ok(false)` when
    /// the index already holds a newer version (the write is stale and ignored); an equal
    /// version replaces, so re-applying a commit is harmless. A vector of other than `dims`
    /// values is refused with `DimensionMismatch` and changes nothing.
    pub fn upsert(
        &mut self,
        handle: u32,
        id: &Arc<str>,
        version: u64,
        vector: &[f32],
    ) -> Result<bool, IndexError> {
        let stored = self.load(handle, id, version, vector)?;
        if stored {
            self.mark_unsynced(handle);
        }
        Ok(stored)
    }

    /// `upsert` without marking the document unsynced: for start-up, which loads every row
    /// and then tells which ones the graph holds (`sync_to`).
    pub fn load(
        &mut self,
        handle: u32,
        id: &Arc<str>,
        version: u64,
        vector: &[f32],
    ) -> Result<bool, IndexError> {
        self.check_dims(vector.len())?;
        let row = match self.row(handle) {
            Some(row) if self.versions[row] > version => return Ok(false),
            Some(row) => {
                self.versions[row] = version;
                self.ids[row] = Arc::clone(id);
                row
            }
            None => self.push_row(handle, id, version),
        };
        let dims = self.dims;
        normalise_into(vector, &mut self.vectors[row * dims..(row + 1) * dims]);
        Ok(true)
    }

    /// Moves the vector of document `handle` from version `from` to `to` without changing it,
    /// for a write that kept it (`store::Kept`); `false`, changing nothing, unless the row is
    /// still at `from`. The document stays synced if it was: the graph holds the same vector.
    pub fn restamp(&mut self, handle: u32, from: u64, to: u64) -> bool {
        match self.row(handle) {
            Some(row) if self.versions[row] == from => {
                self.versions[row] = to;
                true
            }
            _ => false,
        }
    }

    /// Removes document `handle`; `false` when it was not indexed. The last row moves into the
    /// hole, so storage stays contiguous and removal costs one row copy.
    pub fn remove(&mut self, handle: u32) -> bool {
        let Some(row) = self.row(handle) else {
            return false;
        };
        let last = self.ids.len() - 1;
        let dims = self.dims;
        if row != last {
            self.vectors
                .copy_within(last * dims..(last + 1) * dims, row * dims);
            self.rows[self.handles[last] as usize] = row as u32;
        }
        self.rows[handle as usize] = NO_ROW;
        self.vectors.truncate(last * dims);
        self.handles.swap_remove(row);
        self.ids.swap_remove(row);
        self.versions.swap_remove(row);
        self.mark_unsynced(handle);
        true
    }

    /// The document version the vector of `handle` was computed from.
    pub fn version(&self, handle: u32) -> Option<u64> {
        self.row(handle).map(|row| self.versions[row])
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

    /// As [`search`](Self::search), over the documents of `handles` only (those not indexed
    /// are passed over): the exact answer of a filtered query.
    pub fn search_among(
        &self,
        query: &[f32],
        top_k: usize,
        handles: &RoaringBitmap,
    ) -> Result<Vec<Hit>, IndexError> {
        let unit_query = self.unit_query(query)?;
        let rows = handles.iter().filter_map(|handle| self.row(handle));
        Ok(best_of(self.rows_at(rows), &unit_query, top_k))
    }

    /// Frees the capacity that removed rows left behind.
    pub fn shrink_to_fit(&mut self) {
        self.vectors.shrink_to_fit();
        self.handles.shrink_to_fit();
        self.ids.shrink_to_fit();
        self.versions.shrink_to_fit();
        self.unsynced.shrink_to_fit();
        let used = self
            .rows
            .iter()
            .rposition(|&row| row != NO_ROW)
            .map_or(0, |last| last + 1);
        self.rows.truncate(used);
        self.rows.shrink_to_fit();
    }

    /// The handles of every document indexed, for restricting another model's search to the
    /// documents both models have (`IndexSet::search_in_both`).
    pub fn handle_set(&self) -> RoaringBitmap {
        self.handles.iter().copied().collect()
    }

    /// The `top_k` best of the documents a graph proposed (`candidates`) and of every document
    /// the graph has not caught up with, all scored exactly here; with `among`, only documents
    /// in it. A candidate that was removed, or changed since the graph took it, is passed over
    /// or scored by its current vector.
    pub fn search_candidates(
        &self,
        query: &[f32],
        top_k: usize,
        candidates: &[u64],
        among: Option<&RoaringBitmap>,
    ) -> Result<Vec<Hit>, IndexError> {
        let unit_query = self.unit_query(query)?;
        let admitted = |handle: u32| among.is_none_or(|among| among.contains(handle));
        let proposed = candidates
            .iter()
            .filter_map(|&key| u32::try_from(key).ok())
            .filter(|handle| !self.unsynced.contains_key(handle));
        let rows = proposed
            .chain(self.unsynced.keys().copied())
            .filter(|&handle| admitted(handle))
            .filter_map(|handle| self.row(handle));
        Ok(best_of(self.rows_at(rows), &unit_query, top_k))
    }

    /// Up to `limit` of the changes the graph has not taken, in no particular order, with
    /// each document's vector as it is now.
    pub fn unsynced_changes(&self, limit: usize) -> Vec<Change> {
        let dims = self.dims;
        self.unsynced
            .iter()
            .take(limit)
            .map(|(&handle, &stamp)| Change {
                handle,
                stamp,
                vector: self
                    .row(handle)
                    .map(|row| self.vectors[row * dims..(row + 1) * dims].to_vec()),
            })
            .collect()
    }

    /// Records that the graph has taken `changes`: each is synced unless the document changed
    /// again since it was copied.
    pub fn mark_synced(&mut self, changes: &[Change]) {
        for change in changes {
            if self.unsynced.get(&change.handle) == Some(&change.stamp) {
                self.unsynced.remove(&change.handle);
            }
        }
    }

    /// The id and version of document `handle` if the graph holds its current vector: what a
    /// saved graph records for its node.
    pub fn synced_entry(&self, handle: u32) -> Option<(&Arc<str>, u64)> {
        if self.unsynced.contains_key(&handle) {
            return None;
        }
        let row = self.row(handle)?;
        Some((&self.ids[row], self.versions[row]))
    }

    /// Records that the graph holds the current vector of exactly the documents of `graph`:
    /// every other document is unsynced, for the graph's feeder to add. Start-up calls it once
    /// the graph is restored and reconciled (an empty set for a graph built anew).
    pub fn sync_to(&mut self, graph: &RoaringBitmap) {
        self.unsynced.clear();
        let lacking: Vec<u32> = self
            .handles
            .iter()
            .copied()
            .filter(|&handle| !graph.contains(handle))
            .collect();
        for handle in lacking {
            self.mark_unsynced(handle);
        }
    }

    /// How many documents changed since the graph last took them.
    pub fn unsynced_len(&self) -> usize {
        self.unsynced.len()
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

    fn row(&self, handle: u32) -> Option<usize> {
        match self.rows.get(handle as usize) {
            Some(&row) if row != NO_ROW => Some(row as usize),
            _ => None,
        }
    }

    fn mark_unsynced(&mut self, handle: u32) {
        self.stamps += 1;
        self.unsynced.insert(handle, self.stamps);
    }

    /// Appends a zeroed row for `handle` and returns its number.
    fn push_row(&mut self, handle: u32, id: &Arc<str>, version: u64) -> usize {
        let row = self.ids.len();
        if self.rows.len() <= handle as usize {
            self.rows.resize(handle as usize + 1, NO_ROW);
        }
        self.rows[handle as usize] = u32::try_from(row).expect("fewer than 2^32 rows");
        self.handles.push(handle);
        self.ids.push(Arc::clone(id));
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

    /// The vector and id of each of `rows`.
    fn rows_at(
        &self,
        rows: impl Iterator<Item = usize>,
    ) -> impl Iterator<Item = (&[f32], &Arc<str>)> {
        let dims = self.dims;
        rows.map(move |row| (&self.vectors[row * dims..(row + 1) * dims], &self.ids[row]))
    }
}

/// The `top_k` of `rows` most similar to `unit_query`, best first, equal scores by id.
fn best_of<'a>(
    rows: impl Iterator<Item = (&'a [f32], &'a Arc<str>)>,
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
