//! No wasted embeddings (issue 14): a write whose text is unchanged keeps the vectors stored
//! for that text instead of embedding it again; only the version moves, and the kept vectors
//! follow it.
//!
//! A vector depends on its model and its text alone (API.md: identical text always gives the
//! identical vector for a model), so a vector computed from the stored version of a document
//! is still right for a new version with the same text. The rule, in two halves:
//! - Before embedding, the write reads what is stored (`Store::stored_documents`) and
//!   [`Kept::read`] names, for each document whose text is unchanged, every model whose vector
//!   is current (computed from the stored version). Those models embed nothing for it.
//! - In the store transaction, the keep holds only if the document is still at that version
//!   with that text ([`Kept::still_holds`], compare-and-set) and each kept vector is still at
//!   that version; then the kept vectors are re-stamped with the new version in place, without
//!   copying them. Otherwise the whole write fails with `StoreError::Conflict`, and the caller
//!   reads again and retries (`Documents::upsert`).
//!
//! The stored text itself is compared, not a hash of it: the write reads the few texts it is
//! about to replace anyway, an exact comparison cannot collide, and no schema change or hash
//! of every existing row is needed.

use std::collections::{HashMap, HashSet};

use super::StoredDocument;

/// The vectors a write keeps from the stored version of its document, whose text it does not
/// change.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Kept {
    /// The stored version the write read: the version each kept vector was computed from.
    pub version: u64,
    /// The models whose vectors move to the write's new version; never empty.
    pub models: Vec<String>,
}

impl Kept {
    /// What a write of `text` over `stored` may keep: every model whose vector is current,
    /// when the text is unchanged; `None` when it changed, or no vector is current.
    pub fn read(stored: &StoredDocument, text: &str) -> Option<Kept> {
        if stored.text != text {
            return None;
        }
        let models: Vec<String> = stored
            .embeddings
            .iter()
            .filter(|vector| vector.version == stored.version)
            .map(|vector| vector.model.clone())
            .collect();
        (!models.is_empty()).then_some(Kept {
            version: stored.version,
            models,
        })
    }

    /// What each write of `texts` (document id, new text) may keep, given the stored documents.
    /// Only the first write of an id in one bulk may keep: a later one follows it in the same
    /// transaction, over a version the read did not see, so it embeds.
    pub fn read_all<'a>(
        stored: &[StoredDocument],
        texts: impl IntoIterator<Item = (&'a str, &'a str)>,
    ) -> Vec<Option<Kept>> {
        let stored: HashMap<&str, &StoredDocument> =
            stored.iter().map(|d| (d.id.as_str(), d)).collect();
        let mut seen = HashSet::new();
        texts
            .into_iter()
            .map(|(id, text)| {
                let first = seen.insert(id);
                first.then(|| Kept::read(stored.get(id)?, text)).flatten()
            })
            .collect()
    }

    /// Whether the keep still holds for a write of `text` over what the transaction finds
    /// stored (version and text, `None` when the document is gone): the document has not been
    /// written or deleted since the keep was read.
    pub fn still_holds(&self, stored: Option<(u64, &str)>, text: &str) -> bool {
        stored.is_some_and(|(version, stored_text)| version == self.version && stored_text == text)
    }

    /// Whether the write keeps `model`'s vector.
    pub fn keeps(&self, model: &str) -> bool {
        self.models.iter().any(|m| m == model)
    }
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;
    use crate::store::VectorInfo;

    fn stored(id: &str, text: &str, version: u64, vectors: &[(&str, u64)]) -> StoredDocument {
        StoredDocument {
            id: id.to_owned(),
            text: text.to_owned(),
            metadata: json!({}),
            version,
            embeddings: vectors
                .iter()
                .map(|(model, version)| VectorInfo {
                    model: (*model).to_owned(),
                    version: *version,
                    dimensions: 3,
                })
                .collect(),
        }
    }

    fn kept(version: u64, models: &[&str]) -> Option<Kept> {
        Some(Kept {
            version,
            models: models.iter().map(|m| (*m).to_owned()).collect(),
        })
    }

    #[test]
    fn an_unchanged_text_keeps_exactly_the_current_vectors() {
        let doc = stored("a", "same", 3, &[("v1", 3), ("v2", 2), ("v3", 3)]);
        assert_eq!(Kept::read(&doc, "same"), kept(3, &["v1", "v3"]));
    }

    #[test]
    fn a_changed_text_or_no_current_vector_keeps_nothing() {
        let doc = stored("a", "old", 3, &[("v1", 3)]);
        assert_eq!(Kept::read(&doc, "new"), None);
        let stale = stored("a", "same", 3, &[("v1", 2)]);
        assert_eq!(Kept::read(&stale, "same"), None);
        assert_eq!(Kept::read(&stored("a", "same", 1, &[]), "same"), None);
    }

    #[test]
    fn only_the_first_write_of_an_id_in_a_bulk_keeps_and_new_ids_keep_nothing() {
        let docs = [stored("a", "same", 1, &[("v1", 1)])];
        let writes = [("a", "same"), ("new", "text"), ("a", "same")];
        assert_eq!(
            Kept::read_all(&docs, writes),
            [kept(1, &["v1"]), None, None]
        );
    }

    #[test]
    fn a_keep_holds_only_over_the_version_and_text_it_read() {
        let keep = kept(4, &["v1"]).unwrap();
        assert!(keep.still_holds(Some((4, "same")), "same"));
        assert!(!keep.still_holds(Some((5, "same")), "same"), "rewritten");
        assert!(!keep.still_holds(Some((4, "other")), "same"), "other text");
        assert!(!keep.still_holds(None, "same"), "deleted");
        assert!(keep.keeps("v1") && !keep.keeps("v2"));
    }
}
