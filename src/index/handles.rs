//! Dense `u32` numbers for document ids, shared by every index in memory.
//!
//! The vector rows of each model, the approximate graphs and the metadata postings all name a
//! document by the same handle, so a filter's bitmap of handles is also the predicate a graph
//! search checks per visited node, and a candidate from a graph is found among a model's rows
//! by indexing an array instead of hashing a string. A handle is freed when its document is
//! deleted and reused by the next new id; the indexes forget a deleted document before its
//! handle is freed (see `IndexSet::remove`).

use std::collections::HashMap;
use std::sync::Arc;

/// The two-way map between document ids and handles.
#[derive(Debug, Default)]
pub struct Handles {
    by_id: HashMap<Arc<str>, u32>,
    /// By handle: the id it stands for, `None` while it is free.
    ids: Vec<Option<Arc<str>>>,
    free: Vec<u32>,
}

impl Handles {
    /// The handle of `id`, if it has one.
    pub fn get(&self, id: &str) -> Option<u32> {
        self.by_id.get(id).copied()
    }

    /// The handle of `id`, given one if it has none.
    pub fn get_or_insert(&mut self, id: &str) -> (u32, Arc<str>) {
        if let Some((id, &handle)) = self.by_id.get_key_value(id) {
            return (handle, Arc::clone(id));
        }
        let id: Arc<str> = Arc::from(id);
        let handle = match self.free.pop() {
            Some(handle) => {
                self.ids[handle as usize] = Some(Arc::clone(&id));
                handle
            }
            None => {
                let handle = u32::try_from(self.ids.len())
                    .expect("fewer than 2^32 documents in one process");
                self.ids.push(Some(Arc::clone(&id)));
                handle
            }
        };
        self.by_id.insert(Arc::clone(&id), handle);
        (handle, id)
    }

    /// Frees the handle of `id` for reuse; `None` when it had none.
    pub fn release(&mut self, id: &str) -> Option<u32> {
        let handle = self.by_id.remove(id)?;
        self.ids[handle as usize] = None;
        self.free.push(handle);
        Some(handle)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_id_keeps_its_handle_until_released_and_a_freed_handle_is_reused() {
        let mut handles = Handles::default();
        let (a, _) = handles.get_or_insert("a");
        let (b, _) = handles.get_or_insert("b");
        assert_ne!(a, b);
        assert_eq!(handles.get_or_insert("a").0, a);
        assert_eq!(handles.get("b"), Some(b));
        assert_eq!(handles.release("a"), Some(a));
        assert_eq!(handles.release("a"), None);
        assert_eq!(handles.get("a"), None);
        let (c, _) = handles.get_or_insert("c");
        assert_eq!(c, a, "a's handle went to c");
    }
}
