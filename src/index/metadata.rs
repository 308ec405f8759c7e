//! Which documents a metadata filter matches, answered from memory.
//!
//! A query's filter must be checked against every candidate document, and asking the store for
//! each would cost a round trip per query and a scan of the table. Instead, every document's
//! top-level scalar fields are posted here: one bitmap of document handles per (field, value),
//! so a filter's matching set is a union per field and an intersection across fields, and its
//! size — the filter's selectivity — is known before any vector is touched.
//!
//! Documents are named by their dense `u32` handles (reused after a delete), so a posting costs
//! a few bits per document in a compressed bitmap rather than a copy of the id. Like the
//! vectors, entries carry the document version they came from, and an older version never
//! replaces a newer one.

use std::collections::HashMap;

use roaring::RoaringBitmap;
use serde_json::Value;

use super::filter::{Filter, Scalar, scalar_fields};

/// A field and one value of it: the key of a posting list.
type Posting = (String, Scalar);

/// The postings of every document's top-level scalar metadata fields, by document handle
/// (see `handles`).
#[derive(Debug, Default)]
pub struct MetadataIndex {
    /// By handle: the version and postings recorded; `None` for a document with none.
    documents: Vec<Option<Entry>>,
    recorded: usize,
    postings: HashMap<Posting, RoaringBitmap>,
}

#[derive(Debug)]
struct Entry {
    version: u64,
    /// Exactly as long as it needs to be: a million documents keep one each.
    fields: Box<[Posting]>,
}

impl MetadataIndex {
    /// Records `metadata` as that of document `handle` at `version`, replacing what an older
    /// version said; `false` (and no change) when a newer version is already recorded.
    ///
    /// A document with no scalar field has nothing to post and takes no entry (a million
    /// documents without metadata cost nothing here); writing it drops what an earlier version
    /// posted. Its version is then not kept, which is safe because writes reach the indexes in
    /// commit order.
    pub fn upsert(&mut self, handle: u32, version: u64, metadata: &Value) -> bool {
        let fields = scalar_fields(metadata);
        if fields.is_empty() {
            self.remove(handle);
            return true;
        }
        let slot = handle as usize;
        if self.documents.len() <= slot {
            self.documents.resize_with(slot + 1, || None);
        }
        let recorded = &mut self.documents[slot];
        if recorded
            .as_ref()
            .is_some_and(|entry| entry.version > version)
        {
            return false;
        }
        let fields = fields.into_boxed_slice();
        let old = match recorded.replace(Entry { version, fields }) {
            Some(old) => old.fields,
            None => {
                self.recorded += 1;
                Box::default()
            }
        };
        unpost(&mut self.postings, &old, handle);
        let fields = recorded.as_ref().map_or(&[][..], |entry| &entry.fields);
        for posting in fields {
            match self.postings.get_mut(posting) {
                Some(handles) => {
                    handles.insert(handle);
                }
                None => {
                    let handles = RoaringBitmap::from_iter([handle]);
                    self.postings.insert(posting.clone(), handles);
                }
            }
        }
        true
    }

    /// Forgets document `handle`; `false` when nothing was recorded for it.
    pub fn remove(&mut self, handle: u32) -> bool {
        let Some(entry) = self
            .documents
            .get_mut(handle as usize)
            .and_then(Option::take)
        else {
            return false;
        };
        unpost(&mut self.postings, &entry.fields, handle);
        self.recorded -= 1;
        true
    }

    /// Whether anything is recorded for document `handle`.
    pub fn contains(&self, handle: u32) -> bool {
        matches!(self.documents.get(handle as usize), Some(Some(_)))
    }

    /// The number of documents with a scalar field recorded.
    pub fn len(&self) -> usize {
        self.recorded
    }

    /// The handles of the documents `filter` matches, or `None` for a filter that matches
    /// every document (`{}`), which needs no list.
    pub fn matching(&self, filter: &Filter) -> Option<RoaringBitmap> {
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
        matching
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

    fn matching(index: &MetadataIndex, filter: Value) -> Vec<u32> {
        let filter = Filter::parse(&filter).unwrap();
        let matching = index.matching(&filter).expect("a filter with fields");
        matching.iter().collect()
    }

    const NONE: [u32; 0] = [];

    #[test]
    fn a_filter_matches_the_union_per_field_and_the_intersection_across_fields() {
        let mut index = MetadataIndex::default();
        index.upsert(0, 1, &json!({"lang": "en", "year": 2024}));
        index.upsert(1, 1, &json!({"lang": "de", "year": 2024}));
        index.upsert(2, 1, &json!({"lang": "en", "year": 2025}));
        index.upsert(3, 1, &json!({"year": 2024}));
        assert_eq!(matching(&index, json!({"lang": "en"})), [0, 2]);
        assert_eq!(
            matching(&index, json!({"lang": ["en", "de"], "year": 2024})),
            [0, 1]
        );
        assert_eq!(matching(&index, json!({"lang": "fr"})), NONE);
        assert!(index.matching(&Filter::default()).is_none());
    }

    #[test]
    fn an_update_moves_the_postings_and_an_older_version_is_ignored() {
        let mut index = MetadataIndex::default();
        index.upsert(7, 2, &json!({"lang": "en"}));
        assert!(!index.upsert(7, 1, &json!({"lang": "de"})), "stale");
        assert_eq!(matching(&index, json!({"lang": "en"})), [7]);
        assert!(index.upsert(7, 3, &json!({"lang": "de"})));
        assert_eq!(matching(&index, json!({"lang": "en"})), NONE);
        assert_eq!(matching(&index, json!({"lang": "de"})), [7]);
        assert!(index.postings.len() == 1, "an emptied posting is dropped");
    }

    #[test]
    fn a_removed_document_never_matches_and_one_without_scalars_takes_no_entry() {
        let mut index = MetadataIndex::default();
        index.upsert(0, 1, &json!({"k": 1}));
        index.upsert(1, 1, &json!({"k": 1}));
        assert!(index.remove(0));
        assert!(!index.remove(0));
        assert_eq!(matching(&index, json!({"k": 1})), [1]);
        index.upsert(0, 1, &json!({"k": 2}));
        assert_eq!(matching(&index, json!({"k": 1})), [1]);
        assert_eq!(matching(&index, json!({"k": 2})), [0]);
        assert_eq!(index.len(), 2);
        index.upsert(0, 2, &json!({"k": [2]}));
        assert_eq!(matching(&index, json!({"k": 2})), NONE);
        assert_eq!(index.len(), 1, "no scalar field, no entry");
    }
}
