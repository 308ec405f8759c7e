//! Start-up: every model's rows and the metadata streamed from the store, while each saved
//! graph loads from disk beside them; then each graph is reconciled with its rows.
//!
//! The saved node lists are read first, and every document they name claims the handle its
//! node has (`Handles::claim`), so that a restored graph needs no renumbering: renaming every
//! node of a graph is two usearch renames per node, seconds at a million. Where two lists
//! disagree (saved by processes that numbered documents differently), the later list's nodes
//! are renumbered (`GraphWriter::rekey`). Loading a graph — reading and checksumming its
//! file, then usearch's load — needs no rows, so it runs on a thread of its own while the
//! rows stream, and costs the start-up only what outlasts the stream.

use std::path::PathBuf;
use std::sync::Arc;
use std::thread::JoinHandle;

use futures_util::{StreamExt, TryStreamExt};
use roaring::RoaringBitmap;
use serde_json::Value;

use super::graph::{Graph, GraphSettings, GraphWriter};
use super::handles::Handles;
use super::metadata::MetadataIndex;
use super::persist::{self, Files, Loaded, PersistError};
use super::set::{IndexSet, ModelParts, model_specs};
use super::{IndexError, VectorIndex};
use crate::embed::ModelRegistry;
use crate::store::{Store, StoreError};

impl IndexSet {
    /// Indexes for every model, filled with every vector the store holds for it, as the
    /// store streams them: loading costs no more memory than the index itself. Each graph
    /// saved under `dir` is restored and reconciled with the store (see `persist`); one that
    /// is missing or unusable is rebuilt in the background, and until a graph catches up,
    /// queries on its model are answered exactly. Graphs are saved under `dir` as they change.
    pub async fn load(
        models: &ModelRegistry,
        store: &dyn Store,
        dir: Option<PathBuf>,
    ) -> Result<Self, StoreError> {
        let specs = model_specs(models);
        let mut start = tokio::task::spawn_blocking(move || Start::new(specs, dir))
            .await
            .expect("reading the saved node lists does not panic");
        for model in 0..start.models.len() {
            let id = start.models[model].model.clone();
            let mut vectors = store.vectors(&id);
            while let Some((doc, version, vector)) = vectors.try_next().await? {
                if let Err(error) = start.add_vector(model, &doc, version, &vector) {
                    return Err(StoreError::Corrupt(format!(
                        "{id} vector of {doc}: {error}"
                    )));
                }
            }
            tracing::info!(model = %id, vectors = start.models[model].rows.len(), "vectors loaded");
        }
        load_metadata(store, &mut start).await?;
        Ok(tokio::task::spawn_blocking(move || start.finish())
            .await
            .expect("restoring the graphs does not panic"))
    }
}

/// The metadata of every document the store holds, for filters. A document whose stored
/// metadata does not decode is left out of the filters, not the whole service: reading it
/// answers 500, and so does a query it would be a hit of.
async fn load_metadata(store: &dyn Store, start: &mut Start) -> Result<(), StoreError> {
    let mut rows = store.metadata();
    while let Some(row) = rows.next().await {
        match row {
            Ok((id, version, fields)) => start.add_metadata(&id, version, &fields),
            Err(StoreError::Corrupt(error)) => {
                tracing::error!(%error, "a document's metadata left out of the filters");
            }
            Err(error) => return Err(error),
        }
    }
    tracing::info!(documents = start.metadata.len(), "metadata filters loaded");
    Ok(())
}

/// An `IndexSet` being loaded: rows and metadata added as the store streams them, saved
/// graphs loading meanwhile.
pub struct Start {
    handles: Handles,
    /// The handles claimed for documents of saved node lists: any that no row or metadata
    /// turns out to hold (the document was deleted after the save) is freed at the end.
    claimed: RoaringBitmap,
    models: Vec<Loading>,
    metadata: MetadataIndex,
}

/// One model being loaded.
struct Loading {
    model: String,
    settings: GraphSettings,
    rows: VectorIndex,
    files: Option<Files>,
    /// The saved graph loading on its own thread; `None` when none was saved or its node list
    /// was unusable.
    graph: Option<JoinHandle<Result<Loaded, PersistError>>>,
}

impl Start {
    /// The start of a load of `models` (id, dimensions, graph settings), with graphs saved
    /// under `dir` (`None`: none are saved): each saved node list is read and its documents
    /// claim their handles, and each saved graph starts loading.
    pub fn new(
        models: impl IntoIterator<Item = (String, usize, GraphSettings)>,
        dir: Option<PathBuf>,
    ) -> Self {
        let mut handles = Handles::default();
        let mut claimed = RoaringBitmap::new();
        let models = models
            .into_iter()
            .map(|(model, dims, settings)| {
                let files = dir.as_deref().map(|dir| Files::new(dir, &model));
                let saved = files.as_ref().and_then(|files| {
                    let saved = read_saved(files, &model, dims, settings)?;
                    saved.claim_handles(&mut handles, &mut claimed);
                    Some(saved)
                });
                let graph = saved.map(|saved| {
                    let files = files.clone().expect("a saved graph has files");
                    spawn_load(&model, saved, files, settings)
                });
                Loading {
                    model,
                    settings,
                    rows: VectorIndex::new(dims),
                    files,
                    graph,
                }
            })
            .collect();
        Self {
            handles,
            claimed,
            models,
            metadata: MetadataIndex::default(),
        }
    }

    /// Adds a stored vector of the `model`-th model.
    pub fn add_vector(
        &mut self,
        model: usize,
        id: &str,
        version: u64,
        vector: &[f32],
    ) -> Result<(), IndexError> {
        let (handle, id) = self.handles.get_or_insert(id);
        self.models[model]
            .rows
            .load(handle, &id, version, vector)
            .map(drop)
    }

    /// Adds a document's stored metadata.
    pub fn add_metadata(&mut self, id: &str, version: u64, fields: &Value) {
        let (handle, _) = self.handles.get_or_insert(id);
        self.metadata.upsert(handle, version, fields);
    }

    /// The loaded set: each saved graph, once loaded, reconciled with its rows (or, unusable,
    /// discarded to be rebuilt), and every claimed handle nothing holds freed.
    pub fn finish(self) -> IndexSet {
        let Start {
            mut handles,
            claimed,
            models,
            metadata,
        } = self;
        let parts: Vec<ModelParts> = models
            .into_iter()
            .map(|loading| loading.restore(&handles))
            .collect();
        for handle in &claimed {
            let held = parts.iter().any(|part| part.rows.version(handle).is_some())
                || metadata.contains(handle);
            if let Some(id) = handles.id(handle).filter(|_| !held).map(Arc::clone) {
                handles.release(&id);
            }
        }
        IndexSet::assemble(parts, handles, metadata)
    }
}

impl Loading {
    /// This model's parts, with its saved graph reconciled with the rows; an unusable one is
    /// logged and deleted, with every row left for a new graph.
    fn restore(mut self, handles: &Handles) -> ModelParts {
        let loaded = self.graph.take().map(|loading| match loading.join() {
            Ok(loaded) => loaded,
            Err(_) => Err(PersistError::Invalid("loading it panicked".to_owned())),
        });
        let graph = loaded.and_then(|loaded| {
            let restored = loaded.and_then(|loaded| loaded.reconcile(&self.rows, handles));
            self.restored_or_discarded(restored)
        });
        let in_graph = match &graph {
            Some((_, writer)) => writer.present().clone(),
            None => RoaringBitmap::new(),
        };
        self.rows.sync_to(&in_graph);
        ModelParts {
            model: self.model,
            rows: self.rows,
            settings: self.settings,
            files: self.files,
            graph,
        }
    }

    /// `restored`, logged, or `None` when it failed, which is logged and its files deleted.
    fn restored_or_discarded(
        &self,
        restored: Result<(Arc<Graph>, GraphWriter), PersistError>,
    ) -> Option<(Arc<Graph>, GraphWriter)> {
        let model = &self.model;
        match restored {
            Ok(graph) => {
                tracing::info!(
                    %model,
                    nodes = graph.1.present().len(),
                    to_add = (self.rows.len() as u64).saturating_sub(graph.1.present().len()),
                    "approximate index restored"
                );
                Some(graph)
            }
            Err(error) => {
                tracing::warn!(%model, %error, "saved approximate index unusable; rebuilding it");
                if let Some(files) = &self.files {
                    files.discard();
                }
                None
            }
        }
    }
}

/// The node list saved in `files`, or `None` when there is none or it is unusable (which is
/// logged, and the files deleted).
fn read_saved(
    files: &Files,
    model: &str,
    dims: usize,
    settings: GraphSettings,
) -> Option<persist::Saved> {
    match persist::read(files, model, dims, settings) {
        Ok(saved) => saved,
        Err(error) => {
            tracing::warn!(%model, %error, "saved approximate index unusable; rebuilding it");
            files.discard();
            None
        }
    }
}

/// Loads `saved`'s graph from `files` on a thread of its own.
fn spawn_load(
    model: &str,
    saved: persist::Saved,
    files: Files,
    settings: GraphSettings,
) -> JoinHandle<Result<Loaded, PersistError>> {
    std::thread::Builder::new()
        .name(format!("load-{model}"))
        .spawn(move || saved.load(&files, settings))
        .expect("the OS starts a thread")
}
