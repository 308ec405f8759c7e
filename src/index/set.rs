//! One `VectorIndex` per registered model, each behind its own `RwLock`, and the documents'
//! metadata postings (`MetadataIndex`) that filtered queries draw their candidates from.
//!
//! The set of models is fixed at start-up, so the map itself needs no lock; each index is
//! locked on its own so a query on one model never waits behind writes to another. Writers
//! hold a write guard only for the in-memory insert (no `.await` under it), and one lock at a
//! time; a filtered query holds the metadata's read guard while it reads one model's.

use std::collections::HashMap;
use std::sync::{RwLock, RwLockReadGuard, RwLockWriteGuard};

use futures_util::{StreamExt, TryStreamExt};

use serde_json::Value;

use super::filter::Filter;
use super::metadata::MetadataIndex;
use super::{Hit, VectorIndex};
use crate::embed::ModelRegistry;
use crate::store::{Store, StoreError};

/// The size of one model's index, as `/metrics` reports it.
#[derive(Debug, Clone, PartialEq)]
pub struct IndexSize {
    pub model: String,
    /// How the index searches: `exact`, a scan of every vector.
    pub kind: &'static str,
    pub vectors: usize,
    /// The bytes of vector data it holds.
    pub bytes: usize,
}

/// The in-memory indexes of every model, rebuilt from the store at start-up.
pub struct IndexSet {
    by_model: HashMap<String, RwLock<VectorIndex>>,
    metadata: RwLock<MetadataIndex>,
}

impl IndexSet {
    /// Empty indexes for every model of the registry.
    pub fn new(models: &ModelRegistry) -> Self {
        let by_model = models
            .models()
            .into_iter()
            .map(|m| (m.id.clone(), RwLock::new(VectorIndex::new(m.dimensions))))
            .collect();
        Self {
            by_model,
            metadata: RwLock::default(),
        }
    }

    /// Indexes for every model, filled with every vector the store holds for it, as the
    /// store streams them: loading costs no more memory than the index itself.
    pub async fn load(models: &ModelRegistry, store: &dyn Store) -> Result<Self, StoreError> {
        let set = Self::new(models);
        for (model, index) in &set.by_model {
            let mut vectors = store.vectors(model);
            while let Some((id, version, vector)) = vectors.try_next().await? {
                if let Err(error) = write(index).upsert(&id, version, &vector) {
                    return Err(StoreError::Corrupt(format!(
                        "{model} vector of {id}: {error}"
                    )));
                }
            }
            tracing::info!(%model, vectors = read(index).len(), "index loaded");
        }
        // A document whose stored metadata does not decode is left out of the filters, not
        // the whole service: reading it answers 500, and so does a query it would be a hit of.
        let mut metadata = store.metadata();
        while let Some(row) = metadata.next().await {
            match row {
                Ok((id, version, fields)) => {
                    write(&set.metadata).upsert(&id, version, &fields);
                }
                Err(StoreError::Corrupt(error)) => {
                    tracing::error!(%error, "a document's metadata left out of the filters");
                }
                Err(error) => return Err(error),
            }
        }
        tracing::info!(
            documents = read(&set.metadata).len(),
            "metadata filters loaded"
        );
        Ok(set)
    }

    /// The size of every model's index.
    pub fn sizes(&self) -> Vec<IndexSize> {
        self.by_model
            .iter()
            .map(|(model, index)| {
                let index = read(index);
                IndexSize {
                    model: model.clone(),
                    kind: "exact",
                    vectors: index.len(),
                    bytes: index.bytes(),
                }
            })
            .collect()
    }

    /// How many documents have metadata a filter can match.
    pub fn filterable_documents(&self) -> usize {
        read(&self.metadata).len()
    }

    /// Records the metadata of `id` at `version` for filters, unless a newer one is there.
    pub fn upsert_metadata(&self, id: &str, version: u64, metadata: &Value) {
        write(&self.metadata).upsert(id, version, metadata);
    }

    /// Adds or replaces the vector of `id` in `model`'s index, unless a newer version is there.
    pub fn upsert(&self, model: &str, id: &str, version: u64, vector: &[f32]) {
        let Some(index) = self.by_model.get(model) else {
            tracing::warn!(%model, "no index for model; vector kept only in the store");
            return;
        };
        if let Err(error) = write(index).upsert(id, version, vector) {
            tracing::error!(%model, %id, %error, "vector not indexed");
        }
    }

    /// Removes `id` from every index and from the filters.
    pub fn remove(&self, id: &str) {
        for index in self.by_model.values() {
            write(index).remove(id);
        }
        write(&self.metadata).remove(id);
    }

    /// The `top_k` nearest documents to `query` in `model`'s index among those `filter`
    /// matches; empty for an unknown model or a query of the wrong dimension (the embedder
    /// checks dimensions before this).
    pub fn search(&self, model: &str, query: &[f32], top_k: usize, filter: &Filter) -> Vec<Hit> {
        let Some(index) = self.by_model.get(model) else {
            return Vec::new();
        };
        let metadata = read(&self.metadata);
        let hits = match metadata.matching(filter) {
            None => read(index).search(query, top_k),
            Some(ids) => read(index).search_among(query, top_k, &ids),
        };
        hits.unwrap_or_default()
    }
}

// A panic under an index lock leaves at worst one entry missing or stale; keep serving.
fn read<T>(index: &RwLock<T>) -> RwLockReadGuard<'_, T> {
    index
        .read()
        .unwrap_or_else(|poisoned| poisoned.into_inner())
}

fn write<T>(index: &RwLock<T>) -> RwLockWriteGuard<'_, T> {
    index
        .write()
        .unwrap_or_else(|poisoned| poisoned.into_inner())
}
