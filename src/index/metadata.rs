//! Which documents a metadata filter matches, answered from memory.
//!
//! A query's filter must be checked against every candidate document, and asking the store for
//! each would cost a round trip per query and a scan of the table. Instead, every document's
//! top-level scalar fields are posted here: one bitmap of document handles per (field, value),
//! so a filter's matching set is a union per field and an intersection across fields, and its
//! size — the filter's selectivity — is known before any vector is touched.
//!
//! Documents are numbered with dense `u32` handles (reused after a delete), so a posting costs
//! a few bits per document in a compressed bitmap rather than a copy of the id. Like the
//! vectors, entries carry the document version they came from, and an older version never
//! replaces a newer one.

use std::collections::HashMap;

use roaring::RoaringBitmap;
use serde_json::Value;

use super::filter::{Filter, Scalar, scalar_fields};

/// A field and one value of it: the key of a posting list.
type Posting = (String, Scalar);

/// The postings of every document's top-level scalar metadata fields.
#[derive(Debug, Default)]
pub struct MetadataIndex {
    handles: HashMap<String, u32>,
    /// By handle: the document's id, version and postings; `None` for a free handle.
    documents: Vec<Option<Entry>>,
    free: Vec<u32>,
    postings: HashMap<Posting, RoaringBitmap>,
}

#[derive(Debug)]
struct Entry {
    id: String,
    version: u64,
    fields: Vec<Posting>,
}

impl MetadataIndex {
    /// Records `metadata` as that of `id` at `version`, replacing what an older version said;
    /// `false` (and no change) when a newer version is already recorded.
    ///
    /// A document with no scalar field has nothing to post and takes no entry (a million
    /// documents without metadata cost nothing here); writing it drops what an earlier version
    /// posted. Its version is then not kept, which is safe because writes reach the indexes in
    /// commit order.
    pub fn upsert(&mut self, id: &str, version: u64, metadata: &Value) -> bool {
        let fields = scalar_fields(metadata);
        if fields.is_empty() {
            self.remove(id);
            return true;
        }
        let handle = match self.handles.get(id) {
            Some(&handle) => handle,
            None => self.new_handle(id, version),
        };
        let entry = self.documents[handle as usize]
            .as_mut()
            .expect("a handle in use has an entry");
        if entry.version > version {
            return false;
        }
        entry.version = version;
        let old = std::mem::replace(&mut entry.fields, fields.clone());
        unpost(&mut self.postings, &old, handle);
        for posting in fields {
            self.postings.entry(posting).or_default().insert(handle);
        }
        true
    }

    /// Forgets `id`; `false` when it was not recorded.
    pub fn remove(&mut self, id: &str) -> bool {
        let Some(handle) = self.handles.remove(id) else {
            return false;
        };
        if let Some(entry) = self.documents[handle as usize].take() {
            unpost(&mut self.postings, &entry.fields, handle);
        }
        self.free.push(handle);
        true
    }

    /// The number of documents with a scalar field recorded.
    pub fn len(&self) -> usize {
        self.handles.len()
    }

    /// The ids of the documents `filter` matches, or `None` for a filter that matches every
    /// document (`{}`), which needs no list.
    pub fn matching(&self, filter: &Filter) -> Option<Vec<&str>> {
        if filter.is_empty() {
            return None;
        }
        let mut matching: Option<RoaringBitmap> = None;
        for condition in &filter.conditions {
            let mut any = RoaringBitmap::new();
            for value in &condition.any_of {
                if let Some(posting) = self.postings.get(&(condition.field.clone(), value.clone()))
                {
                    any |= posting;
                }
            }
            matching = Some(match matching {
                Some(all) => all & any,
                None => any,
            });
        }
        let ids = matching
            .unwrap_or_default()
            .iter()
            .filter_map(|handle| self.documents[handle as usize].as_ref())
            .map(|entry| entry.id.as_str())
            .collect();
        Some(ids)
    }

    fn new_handle(&mut self, id: &str, version: u64) -> u32 {
        let entry = Entry {
            id: id.to_owned(),
            version,
            fields: Vec::new(),
        };
        let handle = match self.free.pop() {
            Some(handle) => {
                self.documents[handle as usize] = Some(entry);
                handle
            }
            None => {
                let handle = u32::try_from(self.documents.len())
                    .expect("fewer than 2^32 documents in one process");
                self.documents.push(Some(entry));
                handle
            }
        };
        self.handles.insert(id.to_owned(), handle);
        handle
    }
}

/// Takes `handle` out of the postings of `fields`, dropping postings left empty.
fn unpost(postings: &mut HashMap<Posting, RoaringBitmap>, fields: &[Posting], handle: u32) {
    for posting in fields {
        if let Some(handles) = postings.get_mut(posting) {
            handles.remove(handle);
            if handles.is_empty() {
                postings.remove(posting);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    fn matching(index: &MetadataIndex, filter: Value) -> Vec<String> {
        let filter = Filter::parse(&filter).unwrap();
        let mut ids: Vec<String> = index
            .matching(&filter)
            .expect("a filter with fields")
            .into_iter()
            .map(str::to_owned)
            .collect();
        ids.sort();
        ids
    }

    #[test]
    fn a_filter_matches_the_union_per_field_and_the_intersection_across_fields() {
        let mut index = MetadataIndex::default();
        index.upsert("a", 1, &json!({"lang": "en", "year": 2024}));
        index.upsert("b", 1, &json!({"lang": "de", "year": 2024}));
        index.upsert("c", 1, &json!({"lang": "en", "year": 2025}));
        index.upsert("d", 1, &json!({"year": 2024}));
        assert_eq!(matching(&index, json!({"lang": "en"})), ["a", "c"]);
        assert_eq!(
            matching(&index, json!({"lang": ["en", "de"], "year": 2024})),
            ["a", "b"]
        );
        assert_eq!(
            matching(&index, json!({"lang": "fr"})),
            Vec::<String>::new()
        );
        assert!(index.matching(&Filter::default()).is_none());
    }

    #[test]
    fn an_update_moves_the_postings_and_an_older_version_is_ignored() {
        let mut index = MetadataIndex::default();
        index.upsert("a", 2, &json!({"lang": "en"}));
        assert!(!index.upsert("a", 1, &json!({"lang": "de"})), "stale");
        assert_eq!(matching(&index, json!({"lang": "en"})), ["a"]);
        assert!(index.upsert("a", 3, &json!({"lang": "de"})));
        assert_eq!(
            matching(&index, json!({"lang": "en"})),
            Vec::<String>::new()
        );
        assert_eq!(matching(&index, json!({"lang": "de"})), ["a"]);
        assert!(index.postings.len() == 1, "an emptied posting is dropped");
    }

    #[test]
    fn a_removed_document_never_matches_and_its_handle_is_reused() {
        let mut index = MetadataIndex::default();
        index.upsert("a", 1, &json!({"k": 1}));
        index.upsert("b", 1, &json!({"k": 1}));
        assert!(index.remove("a"));
        assert!(!index.remove("a"));
        assert_eq!(matching(&index, json!({"k": 1})), ["b"]);
        index.upsert("c", 1, &json!({"k": 2}));
        assert_eq!(index.documents.len(), 2, "a's handle went to c");
        assert_eq!(matching(&index, json!({"k": 1})), ["b"]);
        assert_eq!(matching(&index, json!({"k": 2})), ["c"]);
        assert_eq!(index.len(), 2);
        index.upsert("c", 2, &json!({"k": [2]}));
        assert_eq!(matching(&index, json!({"k": 2})), Vec::<String>::new());
        assert_eq!(index.len(), 1, "no scalar field, no entry");
    }
}
