//! Every model's vectors — exact rows (`VectorIndex`) and an approximate graph (`Graph`) —
//! with the document handles and metadata postings (`MetadataIndex`) they share.
//!
//! The set of models is fixed at start-up, so the map itself needs no lock; each model's rows
//! are locked on their own so a query on one model never waits behind writes to another.
//! Writers hold a write guard only for the in-memory insert (no `.await` under it). Locks are
//! taken in one order — handles, then a model's rows, then the metadata, then a graph — and a
//! write to the rows never waits for the graph: each model's graph is fed by its own thread
//! (see `feed_graph`), which copies what changed out of the rows and adds it with no rows lock
//! held.
//!
//! A query takes the exact path (every row, or every row a filter matches, scored) when the
//! answer must be exact or that is cheap, and the graph otherwise; see [`SearchPath`].

use std::collections::HashMap;
use std::panic::AssertUnwindSafe;
use std::sync::{Arc, Condvar, Mutex, PoisonError, RwLock, RwLockReadGuard, RwLockWriteGuard};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use serde_json::Value;

use super::filter::Filter;
use super::graph::{Graph, GraphSettings, GraphWriter};
use super::handles::Handles;
use super::metadata::MetadataIndex;
use super::persist::{self, Files};
use super::{Change, Hit, VectorIndex};
use crate::embed::ModelRegistry;

/// Below this many vectors (or documents a filter matches), a query scans them exactly: at
/// 384 dimensions that is under ~2.5 ms, and exact.
pub const EXACT_BELOW: usize = 20_000;

/// A filter matching less than this share of a model's documents (one in `N`) is answered by
/// scanning its matches exactly: a graph search restricted to few documents visits about
/// `N` times more nodes than an unrestricted one, and finds fewer true neighbours.
pub const FILTER_EXACT_BELOW_ONE_IN: usize = 20;

/// The size of one model's index, as `/metrics` reports it.
#[derive(Debug, Clone, PartialEq)]
pub struct IndexSize {
    pub model: String,
    /// What is measured: `exact`, the f32 rows every score comes from, or `hnsw`, the
    /// approximate graph that proposes candidates.
    pub kind: &'static str,
    pub vectors: usize,
    /// The bytes it holds in memory.
    pub bytes: usize,
}

/// What a search found and how.
#[derive(Debug, Clone, PartialEq)]
pub struct Found {
    pub hits: Vec<Hit>,
    /// Whether every candidate vector was scored (no graph was consulted).
    pub exact: bool,
}

/// How a query is answered: by scoring every candidate row, or by scoring the graph's
/// proposals plus the rows the graph has not caught up with.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SearchPath {
    Exact,
    Graph,
}

impl SearchPath {
    /// The path for a query of `top_k` hits over `rows` vectors, of which `unsynced` changed
    /// since the graph took them, restricted to `matching` documents by a filter (`None`:
    /// no filter). `exact` is the caller's demand for the exact answer.
    pub fn choose(
        rows: usize,
        unsynced: usize,
        matching: Option<usize>,
        top_k: usize,
        exact: bool,
        settings: GraphSettings,
    ) -> Self {
        let candidates = top_k.saturating_mul(settings.candidates_per_hit);
        let cheap_to_scan = match matching {
            None => rows < EXACT_BELOW,
            Some(m) => m < EXACT_BELOW || m.saturating_mul(FILTER_EXACT_BELOW_ONE_IN) < rows,
        };
        // While the graph is far behind (rebuilding, or a backfill outpacing it), the tail it
        // lacks would be scanned anyway.
        let graph_behind = unsynced.saturating_mul(2) > rows;
        if exact || cheap_to_scan || graph_behind || candidates.saturating_mul(2) > rows {
            Self::Exact
        } else {
            Self::Graph
        }
    }
}

/// What one model's index is made of when the set is assembled.
pub(super) struct ModelParts {
    pub model: String,
    pub rows: VectorIndex,
    pub settings: GraphSettings,
    /// Where the graph is saved; `None` when it is not.
    pub files: Option<Files>,
    /// The graph restored from its files; `None` for a new one, fed from the rows.
    pub graph: Option<(Arc<Graph>, GraphWriter)>,
}

/// One model's rows and graph.
struct ModelIndex {
    rows: RwLock<VectorIndex>,
    /// `None` when usearch could not make one; then every query is exact.
    graph: Option<Arc<Graph>>,
    feed: Feed,
}

/// Wakes a graph's feeding thread when the rows change, and stops it.
#[derive(Default)]
struct Feed {
    state: Mutex<FeedState>,
    changed: Condvar,
}

#[derive(Default)]
struct FeedState {
    changed: bool,
    stopped: bool,
}

/// The in-memory indexes of every model, rebuilt from the store at start-up.
pub struct IndexSet {
    handles: RwLock<Handles>,
    by_model: HashMap<String, Arc<ModelIndex>>,
    metadata: RwLock<MetadataIndex>,
    feeders: Mutex<Vec<JoinHandle<()>>>,
}

impl IndexSet {
    /// Empty indexes for every model of the registry, each graph with a thread feeding it;
    /// nothing is saved.
    pub fn new(models: &ModelRegistry) -> Self {
        Self::for_models(model_specs(models))
    }

    /// Empty indexes for models given by id, dimensions and graph settings.
    fn for_models(models: impl IntoIterator<Item = (String, usize, GraphSettings)>) -> Self {
        let parts = models
            .into_iter()
            .map(|(model, dims, settings)| ModelParts {
                model,
                rows: VectorIndex::new(dims),
                settings,
                files: None,
                graph: None,
            })
            .collect();
        Self::assemble(parts, Handles::default(), MetadataIndex::default())
    }

    /// The set of `models`' rows, each with its graph — the one restored, or a new one fed
    /// from the rows — and the thread that feeds it.
    pub(super) fn assemble(
        models: Vec<ModelParts>,
        handles: Handles,
        metadata: MetadataIndex,
    ) -> Self {
        let mut by_model = HashMap::new();
        let mut feeders = Vec::new();
        for parts in models {
            let ModelParts {
                model,
                rows,
                settings,
                files,
                graph,
            } = parts;
            let graph = graph.or_else(|| match Graph::new(rows.dims(), settings) {
                Ok(graph) => Some(graph),
                Err(error) => {
                    tracing::error!(%model, %error, "no approximate index; queries scan");
                    None
                }
            });
            let (graph, writer) = graph.unzip();
            let index = Arc::new(ModelIndex {
                rows: RwLock::new(rows),
                graph,
                feed: Feed::default(),
            });
            // Whatever the rows hold beyond the graph is for the feeder to add straight away.
            index.feed.wake();
            if let Some(writer) = writer {
                let feeder = Feeder {
                    model: model.clone(),
                    index: Arc::clone(&index),
                    writer,
                    files,
                };
                feeders.push(feeder.spawn());
            }
            by_model.insert(model, index);
        }
        Self {
            handles: RwLock::new(handles),
            by_model,
            metadata: RwLock::new(metadata),
            feeders: Mutex::new(feeders),
        }
    }

    /// Stops the graphs' feeding threads, each saving its graph first if it changed since it
    /// was last saved. Blocks for as long as that takes; searches keep working.
    pub fn close(&self) {
        for index in self.by_model.values() {
            index.feed.stop();
        }
        let feeders = std::mem::take(&mut *lock(&self.feeders));
        for feeder in feeders {
            if feeder.join().is_err() {
                tracing::error!("a graph's feeding thread panicked");
            }
        }
    }

    /// The size of every model's rows and graph.
    pub fn sizes(&self) -> Vec<IndexSize> {
        let mut sizes = Vec::new();
        for (model, index) in &self.by_model {
            let rows = read(&index.rows);
            sizes.push(IndexSize {
                model: model.clone(),
                kind: "exact",
                vectors: rows.len(),
                bytes: rows.bytes(),
            });
            drop(rows);
            if let Some(graph) = &index.graph {
                sizes.push(IndexSize {
                    model: model.clone(),
                    kind: "hnsw",
                    vectors: graph.len(),
                    bytes: graph.bytes(),
                });
            }
        }
        sizes
    }

    /// How many of `model`'s documents changed since its graph took them: zero once the graph
    /// has caught up.
    pub fn unsynced(&self, model: &str) -> usize {
        self.by_model
            .get(model)
            .map_or(0, |index| read(&index.rows).unsynced_len())
    }

    /// How many documents have metadata a filter can match.
    pub fn filterable_documents(&self) -> usize {
        read(&self.metadata).len()
    }

    /// Records the metadata of `id` at `version` for filters, unless a newer one is there.
    pub fn upsert_metadata(&self, id: &str, version: u64, metadata: &Value) {
        let mut handles = write(&self.handles);
        let (handle, _) = handles.get_or_insert(id);
        write(&self.metadata).upsert(handle, version, metadata);
    }

    /// Adds or replaces the vector of `id` in `model`'s index, unless a newer version is there.
    pub fn upsert(&self, model: &str, id: &str, version: u64, vector: &[f32]) {
        let Some(index) = self.by_model.get(model) else {
            tracing::warn!(%model, "no index for model; vector kept only in the store");
            return;
        };
        let mut handles = write(&self.handles);
        let (handle, id) = handles.get_or_insert(id);
        match write(&index.rows).upsert(handle, &id, version, vector) {
            Ok(true) => index.feed.wake(),
            Ok(false) => {}
            Err(error) => tracing::error!(%model, %id, %error, "vector not indexed"),
        }
    }

    /// Moves the vector of `id` in `model`'s index from version `from` to `to`, unchanged, for
    /// a write that kept it; the graph is not fed again, since it holds the same vector.
    /// `false` when the index does not hold `id` at `from`.
    pub fn restamp(&self, model: &str, id: &str, from: u64, to: u64) -> bool {
        let Some(index) = self.by_model.get(model) else {
            return false;
        };
        let handles = read(&self.handles);
        let Some(handle) = handles.get(id) else {
            return false;
        };
        write(&index.rows).restamp(handle, from, to)
    }

    /// Removes `id` from every index and from the filters, then frees its handle: with the
    /// handles locked throughout, no write can give the handle a row in between.
    pub fn remove(&self, id: &str) {
        let mut handles = write(&self.handles);
        let Some(handle) = handles.get(id) else {
            return;
        };
        for index in self.by_model.values() {
            if write(&index.rows).remove(handle) {
                index.feed.wake();
            }
        }
        write(&self.metadata).remove(handle);
        handles.release(id);
    }

    /// Removes the vectors of `ids` from `model`'s index only (the documents stay): the store
    /// deleted them when `model` stopped being used (`cleanup`). Its graph follows.
    pub fn remove_vectors(&self, model: &str, ids: &[String]) {
        let Some(index) = self.by_model.get(model) else {
            return;
        };
        let handles = read(&self.handles);
        let mut rows = write(&index.rows);
        let removed = ids
            .iter()
            .filter_map(|id| handles.get(id))
            .filter(|&handle| rows.remove(handle))
            .count();
        drop(rows);
        if removed > 0 {
            index.feed.wake();
        }
    }

    /// Gives the memory `model`'s rows no longer use back, once many were removed.
    pub fn compact(&self, model: &str) {
        if let Some(index) = self.by_model.get(model) {
            write(&index.rows).shrink_to_fit();
        }
    }

    /// The `top_k` nearest documents to `query` in `model`'s index among those `filter`
    /// matches, exactly when `exact` (and whenever [`SearchPath::choose`] finds the exact scan
    /// cheap or the graph behind); empty for an unknown model or a query of the wrong
    /// dimension (the embedder checks dimensions before this).
    pub fn search(
        &self,
        model: &str,
        query: &[f32],
        top_k: usize,
        filter: &Filter,
        exact: bool,
    ) -> Found {
        let Some(index) = self.by_model.get(model) else {
            return Found {
                hits: Vec::new(),
                exact: true,
            };
        };
        let matching = read(&self.metadata).matching(filter);
        let rows = read(&index.rows);
        let path = match &index.graph {
            Some(graph) => SearchPath::choose(
                rows.len(),
                rows.unsynced_len(),
                matching.as_ref().map(|m| m.len() as usize),
                top_k,
                exact,
                graph.settings(),
            ),
            None => SearchPath::Exact,
        };
        let graph = index.graph.as_ref().filter(|_| path == SearchPath::Graph);
        let approximate = graph.and_then(|graph| {
            let count = top_k.saturating_mul(graph.settings().candidates_per_hit);
            let unit_query = rows.unit_query(query).ok()?;
            let admit = matching
                .as_ref()
                .map(|matching| move |handle: u32| matching.contains(handle));
            let admit = admit.as_ref().map(|admit| admit as &dyn Fn(u32) -> bool);
            match graph.search(&unit_query, count, admit) {
                Ok(candidates) => Some(candidates),
                Err(error) => {
                    tracing::warn!(%model, %error, "graph search failed; scanning instead");
                    None
                }
            }
        });
        let hits = match (&approximate, &matching) {
            (Some(candidates), _) => {
                rows.search_candidates(query, top_k, candidates, matching.as_ref())
            }
            (None, None) => rows.search(query, top_k),
            (None, Some(matching)) => rows.search_among(query, top_k, matching),
        };
        Found {
            hits: hits.unwrap_or_default(),
            exact: approximate.is_none(),
        }
    }

    /// The `top_k` nearest documents to `query` in `model`'s index among those that also have
    /// a vector of `other`, scored exactly: a labelled evaluation judges two models on the same
    /// documents (`domain::evaluation`), and judges the models, not an approximate index.
    /// Empty for an unknown model or a query of the wrong dimension.
    pub fn search_in_both(
        &self,
        model: &str,
        other: &str,
        query: &[f32],
        top_k: usize,
    ) -> Vec<Hit> {
        let (Some(index), Some(other)) = (self.by_model.get(model), self.by_model.get(other))
        else {
            return Vec::new();
        };
        let shared = read(&other.rows).handle_set();
        read(&index.rows)
            .search_among(query, top_k, &shared)
            .unwrap_or_default()
    }
}

impl Drop for IndexSet {
    fn drop(&mut self) {
        self.close();
    }
}

impl Feed {
    fn wake(&self) {
        lock(&self.state).changed = true;
        self.changed.notify_one();
    }

    fn stop(&self) {
        lock(&self.state).stopped = true;
        self.changed.notify_one();
    }

    /// Waits for a change, or until `timeout` has passed; `false` once stopped.
    fn wait(&self, timeout: Duration) -> bool {
        let state = lock(&self.state);
        let (mut state, _) = self
            .changed
            .wait_timeout_while(state, timeout, |state| !state.changed && !state.stopped)
            .unwrap_or_else(PoisonError::into_inner);
        state.changed = false;
        !state.stopped
    }

    fn stopped(&self) -> bool {
        lock(&self.state).stopped
    }
}

/// Every model of the registry as an index is made for it: id, dimensions, graph settings.
pub(super) fn model_specs(models: &ModelRegistry) -> Vec<(String, usize, GraphSettings)> {
    models
        .models()
        .into_iter()
        .map(|m| {
            let settings = models.index_settings(&m.id);
            (m.id, m.dimensions, settings)
        })
        .collect()
}

/// How many changes the feeding thread copies out of the rows at a time: the rows' read lock
/// is held for the copy, so writers wait at most that long.
const FEED_BATCH: usize = 256;

/// How long the feeding thread waits after the graph refused a change before trying again.
const FEED_RETRY: Duration = Duration::from_secs(1);

/// The feeding threads' nice value: below requests and below the backfill's own background
/// work (nice 10), so that on a busy machine the graph lags — queries scan what it lacks,
/// exactly — rather than the backfill and requests slowing down; on idle cores it runs at
/// full speed. Measured: at normal priority the feeders cut the backfill to 0.66× of the raw
/// loop on two cores (bench/RESULTS.md, "Backfill overhead").
const FEED_NICE: libc::c_int = 15;

/// How often a graph that changed is saved; it is also saved when the set closes. What a crash
/// loses since is re-added from the rows at the next start.
const SAVE_EVERY: Duration = Duration::from_secs(300);

/// How many nodes a save lists under one hold of the rows' read lock: a writer waits for one
/// such chunk at most, not for the whole list, which at a million nodes is a million lookups
/// and allocations.
const SAVE_CHUNK: usize = 4096;

/// The thread that keeps one model's graph in step with its rows, and saves it.
struct Feeder {
    model: String,
    index: Arc<ModelIndex>,
    writer: GraphWriter,
    /// Where the graph is saved; `None` when it is not.
    files: Option<Files>,
}

impl Feeder {
    fn spawn(self) -> JoinHandle<()> {
        std::thread::Builder::new()
            .name(format!("graph-{}", self.model))
            .spawn(move || self.run())
            .expect("the OS starts a thread")
    }

    /// Until stopped: whenever the rows change, copies the changes the graph lacks into it;
    /// every [`SAVE_EVERY`] and when stopped, saves the graph if it changed. Runs at nice
    /// [`FEED_NICE`].
    fn run(mut self) {
        crate::embed::background::lower_this_threads_priority_to(FEED_NICE);
        let mut unsaved = false;
        let mut saved_at = Instant::now();
        let mut timeout = SAVE_EVERY;
        while self.index.feed.wait(timeout) {
            unsaved |= self.catch_up();
            // Counts the bytes once they are due, so the gauge settles when changes stop.
            if self.writer.bytes_due_in() == Some(Duration::ZERO) {
                self.writer.measure_fully();
            }
            timeout = self.writer.bytes_due_in().unwrap_or(SAVE_EVERY);
            if unsaved && saved_at.elapsed() >= SAVE_EVERY {
                self.save();
                (unsaved, saved_at) = (false, Instant::now());
            }
        }
        if unsaved {
            self.save();
        }
    }

    /// Applies what changed until nothing is left or the set closes; whether anything was
    /// applied. A change the graph refuses, or a panic, leaves the change unsynced — queries
    /// keep scanning it exactly — and is retried after [`FEED_RETRY`].
    fn catch_up(&mut self) -> bool {
        let mut applied_any = false;
        while !self.index.feed.stopped() {
            if self.clear_if_emptied() {
                applied_any = true;
                continue;
            }
            let changes = read(&self.index.rows).unsynced_changes(FEED_BATCH);
            if changes.is_empty() {
                break;
            }
            let writer = &mut self.writer;
            let outcome =
                std::panic::catch_unwind(AssertUnwindSafe(|| apply_changes(writer, &changes)));
            let applied = match outcome {
                Ok(Ok(())) => &changes[..],
                Ok(Err((done, error))) => {
                    tracing::error!(model = %self.model, %error, "approximate index refused a change; retrying");
                    &changes[..done]
                }
                Err(_) => {
                    tracing::error!(model = %self.model, "approximate index panicked; retrying");
                    &[]
                }
            };
            applied_any |= !applied.is_empty();
            self.writer.measure();
            write(&self.index.rows).mark_synced(applied);
            if applied.len() < changes.len() {
                std::thread::sleep(FEED_RETRY);
            }
        }
        applied_any
    }

    /// When every row is gone and the graph still has nodes to remove (a model's vectors
    /// deleted after a switch), empties the graph in one step instead of node by node;
    /// whether it did. A row written meanwhile stays unsynced (its stamp is newer than the
    /// removals taken), so the next round adds it. A graph that refuses is left to the
    /// node-by-node path.
    fn clear_if_emptied(&mut self) -> bool {
        let removals = {
            let rows = read(&self.index.rows);
            if !rows.is_empty() || rows.unsynced_len() == 0 || self.writer.present().is_empty() {
                return false;
            }
            rows.unsynced_changes(usize::MAX)
        };
        if let Err(error) = self.writer.clear() {
            tracing::error!(model = %self.model, %error, "could not empty the approximate index at once");
            return false;
        }
        tracing::info!(model = %self.model, removed = removals.len(), "approximate index emptied with its rows");
        self.writer.measure_fully();
        write(&self.index.rows).mark_synced(&removals);
        true
    }

    /// Saves the graph, when it has files; a failure is logged, and the next start rebuilds
    /// or reconciles from what is on disk.
    fn save(&self) {
        let Some(files) = &self.files else {
            return;
        };
        let dims = read(&self.index.rows).dims();
        let present = self.writer.present();
        let mut nodes = Vec::with_capacity(present.len() as usize);
        let mut handles = present.iter().peekable();
        while handles.peek().is_some() {
            let chunk = handles.by_ref().take(SAVE_CHUNK);
            nodes.extend(persist::node_list(chunk, &read(&self.index.rows)));
        }
        let settings = self.writer.settings();
        let started = Instant::now();
        match persist::save(files, &self.model, dims, settings, &self.writer, &nodes) {
            Ok(()) => tracing::info!(
                model = %self.model,
                nodes = nodes.len(),
                elapsed_ms = started.elapsed().as_millis() as u64,
                "approximate index saved"
            ),
            Err(error) => {
                tracing::error!(model = %self.model, %error, "approximate index not saved")
            }
        }
    }
}

/// Applies `changes` in order; on a failure, how many were applied before it.
fn apply_changes(
    writer: &mut GraphWriter,
    changes: &[Change],
) -> Result<(), (usize, super::graph::GraphError)> {
    for (done, change) in changes.iter().enumerate() {
        writer
            .apply(change.handle, change.vector.as_deref())
            .map_err(|error| (done, error))?;
    }
    Ok(())
}

// A panic under an index lock leaves at worst one entry missing or stale; keep serving.
fn read<T>(index: &RwLock<T>) -> RwLockReadGuard<'_, T> {
    index.read().unwrap_or_else(PoisonError::into_inner)
}

fn write<T>(index: &RwLock<T>) -> RwLockWriteGuard<'_, T> {
    index.write().unwrap_or_else(PoisonError::into_inner)
}

fn lock<T>(mutex: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    mutex.lock().unwrap_or_else(PoisonError::into_inner)
}

#[cfg(test)]
#[path = "set_tests.rs"]
mod tests;
