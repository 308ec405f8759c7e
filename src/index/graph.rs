//! The approximate nearest-neighbour graph of one model: usearch's HNSW.
//!
//! Chosen on measurements on these machines (100k × 384 clustered vectors, M = 16, one
//! thread): usearch with i8 storage builds at ~5,900 vectors/s and holds ~850 bytes per
//! vector (graph links included); alone its recall@10 plateaus near 0.89, but four candidates
//! per hit rescored by their f32 rows reach 0.98 at expansion 64 in ~0.3 ms. f16 storage needs
//! no rescoring (0.985) but takes 1,520 bytes per vector and builds at ~3,500/s; f32 takes
//! 2,860. `hnsw_rs` has no delete, and `hnswlib-rs` does not build on stable Rust. Since the
//! exact rows are kept anyway (they are the ground truth of `exact: true` and of every score,
//! see `VectorIndex`), i8 graphs plus rescoring cost the least memory for the recall.
//!
//! The defaults (efConstruction 128, ef 128, eight candidates per hit) come from the 1M × 384
//! benchmark (bench/RESULTS.md, "Approximate query"): with efConstruction 64 the graph built at
//! 1,683 vectors/s but reached recall@10 0.66 at ef 64 and 0.87 at ef 128; with 128 it builds
//! at 1,225/s (about 14 minutes for a million, once: later starts restore it) and reaches
//! 0.89 and 0.94, at 1.3 and 1.8 ms p50 through the server.
//!
//! usearch's own rules shape this wrapper: one writer at a time (concurrent adds can orphan
//! nodes, upstream issue 735), so adds and removes go through the one [`GraphWriter`];
//! growing (`reserve`) must run with no add or search in flight, so it takes the write side of
//! a lock every add and search holds the read side of; and its per-thread scratch slots are
//! fixed when it grows, so searches are admitted through [`Slots`], never more at once than
//! were reserved.

use std::path::Path;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Condvar, Mutex, PoisonError, RwLock};
use std::time::{Duration, Instant};

use roaring::RoaringBitmap;
use usearch::{Index, IndexOptions, MetricKind, ScalarKind};

/// How a graph stores its copy of each vector; scores always come from the f32 rows.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Quantization {
    /// One byte per dimension: the least memory; needs rescoring for recall (the default).
    #[default]
    I8,
    /// Two bytes per dimension: better recall before rescoring, about 1.8× the memory.
    F16,
    /// Four bytes per dimension, as the rows.
    F32,
}

impl Quantization {
    /// The name the registry file and a saved graph's tag use.
    pub fn name(self) -> &'static str {
        match self {
            Self::I8 => "i8",
            Self::F16 => "f16",
            Self::F32 => "f32",
        }
    }

    fn scalar_kind(self) -> ScalarKind {
        match self {
            Self::I8 => ScalarKind::I8,
            Self::F16 => ScalarKind::F16,
            Self::F32 => ScalarKind::F32,
        }
    }
}

/// How a model's graph is built and searched: the registry's `index` table of the model.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct GraphSettings {
    pub quantization: Quantization,
    /// Links per node (HNSW's M).
    pub connectivity: usize,
    /// Candidates considered while linking a new node (HNSW's efConstruction).
    pub expansion_add: usize,
    /// Candidates considered per search (HNSW's ef), at least the candidates asked for.
    pub expansion_search: usize,
    /// Candidates taken from the graph per hit asked for, all rescored exactly.
    pub candidates_per_hit: usize,
}

impl Default for GraphSettings {
    fn default() -> Self {
        Self {
            quantization: Quantization::I8,
            connectivity: 16,
            expansion_add: 128,
            expansion_search: 128,
            candidates_per_hit: 8,
        }
    }
}

/// Why the graph could not take a change or answer a search; the exact rows answer instead.
#[derive(Debug, thiserror::Error)]
#[error("approximate index: {0}")]
pub struct GraphError(String);

/// usearch takes paths as UTF-8 strings.
fn path_str(path: &Path) -> Result<String, GraphError> {
    path.to_str()
        .map(str::to_owned)
        .ok_or_else(|| GraphError(format!("{} is not UTF-8", path.display())))
}

/// Wraps what usearch threw.
fn failed(error: impl std::fmt::Display) -> GraphError {
    GraphError(error.to_string())
}

/// The graph of one model, searched by any thread and changed only by its [`GraphWriter`].
pub struct Graph {
    index: RwLock<Index>,
    slots: Slots,
    settings: GraphSettings,
    /// Its size and memory as the writer last measured them: usearch's own accounting walks
    /// structures an add is changing, and crashed when read during one, so only the writer
    /// reads it, between changes.
    vectors: AtomicUsize,
    bytes: AtomicUsize,
}

impl Graph {
    /// An empty graph for vectors of `dims` dimensions, and the one writer that may change it.
    pub fn new(
        dims: usize,
        settings: GraphSettings,
    ) -> Result<(Arc<Self>, GraphWriter), GraphError> {
        let options = IndexOptions {
            dimensions: dims,
            metric: MetricKind::Cos,
            quantization: settings.quantization.scalar_kind(),
            connectivity: settings.connectivity,
            expansion_add: settings.expansion_add,
            expansion_search: settings.expansion_search,
            multi: false,
        };
        let index = Index::new(&options).map_err(failed)?;
        let search_slots = search_slots();
        // One slot more than searches may take: the writer's.
        index
            .reserve_capacity_and_threads(INITIAL_CAPACITY, search_slots + 1)
            .map_err(failed)?;
        let graph = Arc::new(Self {
            index: RwLock::new(index),
            slots: Slots::new(search_slots),
            settings,
            vectors: AtomicUsize::new(0),
            bytes: AtomicUsize::new(0),
        });
        let writer = GraphWriter {
            graph: Arc::clone(&graph),
            present: RoaringBitmap::new(),
            bytes_counted_at: Instant::now(),
            bytes_stale: false,
        };
        Ok((graph, writer))
    }

    /// The graph saved at `path` by [`GraphWriter::save`], for vectors of `dims` dimensions
    /// built with `settings`, holding the nodes of `present`; checked by the caller against
    /// what the file was tagged with (see `persist`).
    pub fn restore(
        dims: usize,
        settings: GraphSettings,
        path: &Path,
        present: RoaringBitmap,
    ) -> Result<(Arc<Self>, GraphWriter), GraphError> {
        let (graph, mut writer) = Self::new(dims, settings)?;
        {
            let index = read(&graph.index);
            index.load(&path_str(path)?).map_err(failed)?;
            if index.dimensions() != dims || index.size() != present.len() as usize {
                return Err(GraphError(format!(
                    "{} holds {} vectors of {} dimensions, its list {} of {dims}",
                    path.display(),
                    index.size(),
                    index.dimensions(),
                    present.len()
                )));
            }
            let capacity = index.capacity().max(INITIAL_CAPACITY);
            index
                .reserve_capacity_and_threads(capacity, graph.slots.count + 1)
                .map_err(failed)?;
        }
        writer.present = present;
        writer.measure_fully();
        Ok((graph, writer))
    }

    /// The handles of about `count` documents nearest to `unit_query`, among those `admit`
    /// accepts, nearest first (by the graph's i8 estimate: callers rescore them).
    pub fn search(
        &self,
        unit_query: &[f32],
        count: usize,
        admit: Option<&dyn Fn(u32) -> bool>,
    ) -> Result<Vec<u64>, GraphError> {
        let _slot = self.slots.take();
        let index = read(&self.index);
        let matches = match admit {
            None => index.search(unit_query, count).map_err(failed)?,
            Some(admit) => index
                .filtered_search(unit_query, count, |key| u32::try_from(key).is_ok_and(admit))
                .map_err(failed)?,
        };
        Ok(matches.keys)
    }

    /// How many documents the graph held when its writer last measured it.
    pub fn len(&self) -> usize {
        self.vectors.load(Ordering::Relaxed)
    }

    /// The bytes the graph took in memory (stored vectors, links and spare capacity) when its
    /// writer last counted them, at most [`BYTES_EVERY`] before its last change settled.
    pub fn bytes(&self) -> usize {
        self.bytes.load(Ordering::Relaxed)
    }

    /// How it was built.
    pub fn settings(&self) -> GraphSettings {
        self.settings
    }
}

/// The first capacity of a graph; it doubles as it fills.
const INITIAL_CAPACITY: usize = 1024;

/// How often a writer counts its graph's bytes at most. usearch counts them by visiting every
/// node, tens of milliseconds at a million nodes; counted after every batch of changes, a
/// feeder emptying a 1M graph node by node spent most of its time counting and fell far
/// behind the cleanup (bench/RESULTS.md, "Memory").
const BYTES_EVERY: Duration = Duration::from_secs(1);

/// The only handle that adds to or removes from a [`Graph`]: there is one per graph, and it
/// is not `Clone`, so changes are serialised by construction.
pub struct GraphWriter {
    graph: Arc<Graph>,
    /// The handles that have a node, so that a save can list them all.
    present: RoaringBitmap,
    /// When the graph's bytes were last counted, and whether it changed since.
    bytes_counted_at: Instant,
    bytes_stale: bool,
}

impl GraphWriter {
    /// Makes the graph's node for `handle` hold `unit_vector`, or hold nothing for `None`.
    pub fn apply(&mut self, handle: u32, unit_vector: Option<&[f32]>) -> Result<(), GraphError> {
        let key = u64::from(handle);
        // usearch reuses a removed node's slot before taking a new one, so a new slot, which
        // needs capacity, is taken only when none was removed: when the live count is all.
        let full = {
            let index = read(&self.graph.index);
            index.size() >= index.capacity()
        };
        if unit_vector.is_some() && full {
            self.grow()?;
        }
        let index = read(&self.graph.index);
        if self.present.remove(handle) {
            index.remove(key).map_err(failed)?;
        }
        if let Some(vector) = unit_vector {
            index.add(key, vector).map_err(failed)?;
            self.present.insert(handle);
        }
        drop(index);
        if self.present.is_empty() {
            self.release()?;
        }
        Ok(())
    }

    /// Removes every node at once and gives the graph's memory back: what a graph whose
    /// model's rows were all deleted (its vectors cleaned up after a switch) needs, where
    /// removing a million nodes one by one takes minutes of a background thread and holds the
    /// memory meanwhile.
    pub fn clear(&mut self) -> Result<(), GraphError> {
        let index = self
            .graph
            .index
            .write()
            .unwrap_or_else(PoisonError::into_inner);
        index.reset().map_err(failed)?;
        self.present.clear();
        index
            .reserve_capacity_and_threads(INITIAL_CAPACITY, self.graph.slots.count + 1)
            .map_err(failed)
    }

    /// Gives an emptied graph's memory back: usearch keeps a removed node's slot for reuse,
    /// so a graph whose documents were all removed (its model's vectors deleted after a
    /// switch) would otherwise hold its largest size for good.
    fn release(&mut self) -> Result<(), GraphError> {
        if read(&self.graph.index).capacity() <= INITIAL_CAPACITY {
            return Ok(());
        }
        self.clear()
    }

    /// How the graph was built.
    pub fn settings(&self) -> GraphSettings {
        self.graph.settings
    }

    /// Publishes the graph's size for [`Graph::len`], and its memory for [`Graph::bytes`]
    /// when they were last counted [`BYTES_EVERY`] ago or more; called by the writer after
    /// changes, since reading them during one is unsafe.
    pub fn measure(&mut self) {
        self.bytes_stale = true;
        if self.bytes_counted_at.elapsed() >= BYTES_EVERY {
            self.measure_fully();
        } else {
            self.publish_size();
        }
    }

    /// As [`measure`](Self::measure), counting the bytes now: after a change that frees or
    /// takes much at once (a restore, a clear).
    pub fn measure_fully(&mut self) {
        self.publish_size();
        let bytes = read(&self.graph.index).memory_usage();
        self.graph.bytes.store(bytes, Ordering::Relaxed);
        (self.bytes_counted_at, self.bytes_stale) = (Instant::now(), false);
    }

    /// How long until the bytes of a graph changed since they were counted are due to be
    /// counted again ([`measure`](Self::measure) counts them from then); `None` when they are
    /// current.
    pub fn bytes_due_in(&self) -> Option<Duration> {
        self.bytes_stale
            .then(|| BYTES_EVERY.saturating_sub(self.bytes_counted_at.elapsed()))
    }

    fn publish_size(&self) {
        let size = read(&self.graph.index).size();
        self.graph.vectors.store(size, Ordering::Relaxed);
    }

    /// The handles that have a node.
    pub fn present(&self) -> &RoaringBitmap {
        &self.present
    }

    /// Gives each node the handle `rekey` maps its handle to, or removes it for `None`: what a
    /// restored graph needs where a document's handle is not the one it had when the graph
    /// was saved. A node mapped to its own handle is left as it is. `rekey` is called once
    /// per node and must map no two handles to one.
    pub fn rekey(&mut self, mut rekey: impl FnMut(u32) -> Option<u32>) -> Result<(), GraphError> {
        let moves: Vec<(u32, Option<u32>)> = self
            .present
            .iter()
            .map(|handle| (handle, rekey(handle)))
            .filter(|&(old, new)| new != Some(old))
            .collect();
        let index = read(&self.graph.index);
        // Every moving node out of the way first, so no new handle meets an old one in place.
        let aside = |handle: u32| u64::from(handle) + (1 << 32);
        for &(old, new) in &moves {
            match new {
                Some(_) => index.rename(u64::from(old), aside(old)),
                None => index.remove(u64::from(old)),
            }
            .map_err(failed)?;
            self.present.remove(old);
        }
        for &(old, new) in &moves {
            if let Some(new) = new {
                index.rename(aside(old), u64::from(new)).map_err(failed)?;
                self.present.insert(new);
            }
        }
        Ok(())
    }

    /// Writes the graph to `path` in usearch's format.
    pub fn save(&self, path: &Path) -> Result<(), GraphError> {
        read(&self.graph.index)
            .save(&path_str(path)?)
            .map_err(failed)
    }

    /// Doubles the graph's capacity, with every search held off while it moves.
    fn grow(&mut self) -> Result<(), GraphError> {
        let index = self
            .graph
            .index
            .write()
            .unwrap_or_else(PoisonError::into_inner);
        let capacity = (index.capacity() * 2).max(INITIAL_CAPACITY);
        index
            .reserve_capacity_and_threads(capacity, self.graph.slots.count + 1)
            .map_err(failed)
    }
}

/// How many searches may run in one graph at once: enough for every thread that serves
/// queries, so a query waits for a slot only when more threads than cores search at once.
fn search_slots() -> usize {
    let cores = std::thread::available_parallelism().map_or(4, |n| n.get());
    (cores * 4).max(16)
}

/// A counting semaphore for threads: searches run synchronously, and usearch fails (or, in
/// older releases, crashes) when more threads search than it reserved scratch slots for.
struct Slots {
    count: usize,
    free: Mutex<usize>,
    returned: Condvar,
}

/// A taken slot, given back when dropped.
struct Slot<'a>(&'a Slots);

impl Slots {
    fn new(count: usize) -> Self {
        Self {
            count,
            free: Mutex::new(count),
            returned: Condvar::new(),
        }
    }

    fn take(&self) -> Slot<'_> {
        let mut free = self.free.lock().unwrap_or_else(PoisonError::into_inner);
        while *free == 0 {
            free = self
                .returned
                .wait(free)
                .unwrap_or_else(PoisonError::into_inner);
        }
        *free -= 1;
        Slot(self)
    }
}

impl Drop for Slot<'_> {
    fn drop(&mut self) {
        *self.0.free.lock().unwrap_or_else(PoisonError::into_inner) += 1;
        self.0.returned.notify_one();
    }
}

// The graph holds no invariant of ours that a panic could break; usearch keeps its own.
fn read(index: &RwLock<Index>) -> std::sync::RwLockReadGuard<'_, Index> {
    index.read().unwrap_or_else(PoisonError::into_inner)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn unit(dims: usize, at: usize) -> Vec<f32> {
        let mut vector = vec![0.0; dims];
        vector[at % dims] = 1.0;
        vector
    }

    /// A writer publishes the size after every change, but counts the bytes, which visits
    /// every node, only once they are due or when told to; a caller learns when they are due.
    #[test]
    fn the_size_follows_every_change_and_the_bytes_are_counted_once_due() {
        let (graph, mut writer) = Graph::new(8, GraphSettings::default()).unwrap();
        writer.measure_fully();
        let (empty_bytes, counted_at) = (graph.bytes(), Instant::now());
        assert_eq!(writer.bytes_due_in(), None);

        writer.apply(1, Some(&unit(8, 1))).unwrap();
        writer.measure();
        assert_eq!(graph.len(), 1);
        if counted_at.elapsed() < BYTES_EVERY {
            assert_eq!(graph.bytes(), empty_bytes, "counted before they were due");
            let due = writer
                .bytes_due_in()
                .expect("a change leaves the bytes due");
            assert!(due > Duration::ZERO && due <= BYTES_EVERY, "{due:?}");
        }

        writer.measure_fully();
        assert!(graph.bytes() > empty_bytes, "a node takes memory");
        assert_eq!(writer.bytes_due_in(), None);

        std::thread::sleep(BYTES_EVERY);
        writer.apply(2, Some(&unit(8, 2))).unwrap();
        writer.measure();
        assert_eq!(graph.len(), 2);
        assert_eq!(
            writer.bytes_due_in(),
            None,
            "due bytes are counted by measure"
        );
    }
}
