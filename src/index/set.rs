//! One `VectorIndex` per registered model, each behind its own `RwLock`.
//!
//! The set of models is fixed at start-up, so the map itself needs no lock; each index is
//! locked on its own so a query on one model never waits behind writes to another. Writers
//! hold a write guard only for the in-memory insert (no `.await` under it).

use std::collections::HashMap;
use std::sync::{RwLock, RwLockReadGuard, RwLockWriteGuard};

use futures_util::TryStreamExt;

use super::{Hit, VectorIndex};
use crate::embed::ModelRegistry;
use crate::store::{Store, StoreError};

/// The in-memory indexes of every model, rebuilt from the store at start-up.
pub struct IndexSet {
    by_model: HashMap<String, RwLock<VectorIndex>>,
}

impl IndexSet {
    /// Empty indexes for every model of the registry.
    pub fn new(models: &ModelRegistry) -> Self {
        let by_model = models
            .models()
            .into_iter()
            .map(|m| (m.id.clone(), RwLock::new(VectorIndex::new(m.dimensions))))
            .collect();
        Self { by_model }
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
        Ok(set)
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

    /// Removes `id` from every index.
    pub fn remove(&self, id: &str) {
        for index in self.by_model.values() {
            write(index).remove(id);
        }
    }

    /// The `top_k` nearest documents to `query` in `model`'s index; empty for an unknown model
    /// or a query of the wrong dimension (the embedder checks dimensions before this).
    pub fn search(&self, model: &str, query: &[f32], top_k: usize) -> Vec<Hit> {
        let Some(index) = self.by_model.get(model) else {
            return Vec::new();
        };
        read(index).search(query, top_k).unwrap_or_default()
    }
}

// A panic under an index lock leaves at worst one vector missing or stale; keep serving.
fn read(index: &RwLock<VectorIndex>) -> RwLockReadGuard<'_, VectorIndex> {
    index
        .read()
        .unwrap_or_else(|poisoned| poisoned.into_inner())
}

fn write(index: &RwLock<VectorIndex>) -> RwLockWriteGuard<'_, VectorIndex> {
    index
        .write()
        .unwrap_or_else(|poisoned| poisoned.into_inner())
}
