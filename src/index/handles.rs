//! Dense `u32` numbers for document ids, shared by every index in memory.
//!
//! The vector rows of each model, the approximate graphs and the metadata postings all name a
//! document by the same handle, so a filter's bitmap of handles is also the predicate a graph
//! search checks per visited node, and a candidate from a graph is found among a model's rows
//! by indexing an array instead of hashing a string. A handle is freed when its document is
//! deleted and reused by the next new id; the indexes forget a deleted document before its
//! handle is freed (see `IndexSet::remove`). At start-up a document can be given the handle a
//! saved graph knows it by (`claim`), so that the graph needs no renumbering.

use std::sync::Arc;

use foldhash::HashMap;

/// The two-way map between document ids and handles.
#[derive(Debug, Default)]
pub struct Handles {
    /// Hashed with foldhash, seeded per process: a fifth of SipHash's cost, which start-up
    /// pays once per document.
    by_id: HashMap<Arc<str>, u32>,
    /// By handle: the id it stands for, `None` while it is free.
    ids: Vec<Option<Arc<str>>>,
    /// Every free handle below `ids.len()`, and possibly handles claimed since they were
    /// freed, which are skipped when popped.
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
        let handle = match self.pop_free() {
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

    /// Gives `id` the handle `handle` — the number a saved graph knows it by — unless `id`
    /// has another or `handle` stands for another id; whether `id` now has `handle`. The
    /// numbers skipped to reach `handle` are free for new ids.
    pub fn claim(&mut self, id: &str, handle: u32) -> bool {
        if let Some(&held) = self.by_id.get(id) {
            return held == handle;
        }
        let slot = handle as usize;
        match self.ids.get(slot) {
            Some(Some(_)) => return false,
            Some(None) => {}
            None => {
                let skipped = self.ids.len() as u32..handle;
                self.ids.resize(slot + 1, None);
                self.free.extend(skipped);
            }
        }
        let id: Arc<str> = Arc::from(id);
        self.ids[slot] = Some(Arc::clone(&id));
        self.by_id.insert(id, handle);
        true
    }

    /// The id `handle` stands for, if any.
    pub fn id(&self, handle: u32) -> Option<&Arc<str>> {
        self.ids.get(handle as usize)?.as_ref()
    }

    /// Frees the handle of `id` for reuse; `None` when it had none.
    pub fn release(&mut self, id: &str) -> Option<u32> {
        let handle = self.by_id.remove(id)?;
        self.ids[handle as usize] = None;
        self.free.push(handle);
        Some(handle)
    }

    /// A free handle, skipping those claimed since they were freed.
    fn pop_free(&mut self) -> Option<u32> {
        while let Some(handle) = self.free.pop() {
            if self.ids[handle as usize].is_none() {
                return Some(handle);
            }
        }
        None
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

    #[test]
    fn a_claimed_handle_is_kept_a_taken_one_refused_and_the_skipped_ones_are_free() {
        let mut handles = Handles::default();
        assert!(handles.claim("a", 3));
        assert!(
            handles.claim("a", 3),
            "a claim a document already has holds"
        );
        assert!(!handles.claim("a", 4), "a document keeps its handle");
        assert!(!handles.claim("b", 3), "a handle stands for one document");
        assert!(handles.claim("b", 1), "a skipped handle can be claimed");
        assert_eq!((handles.get("a"), handles.get("b")), (Some(3), Some(1)));
        assert_eq!(handles.id(3).map(|id| &**id), Some("a"));
        let mut new: Vec<u32> = ["c", "d", "e"]
            .iter()
            .map(|id| handles.get_or_insert(id).0)
            .collect();
        new.sort_unstable();
        assert_eq!(
            new,
            [0, 2, 4],
            "new ids take the free handles, then the next"
        );
        assert_eq!(handles.release("a"), Some(3));
        assert!(handles.claim("f", 3), "a freed handle can be claimed");
        assert_eq!(
            handles.get_or_insert("g").0,
            5,
            "and is not given out again"
        );
    }
}
