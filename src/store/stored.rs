//! Values read back from a backend's columns, checked the same way on every backend: a value
//! no write of ours could have stored means the database was changed by hand or is damaged,
//! and is reported as [`StoreError::Corrupt`] rather than guessed at.

use crate::domain::{Actor, HistoryKind};
use crate::store::{StoreError, StoredDocument, VectorInfo};

/// A count or size stored as a signed 64-bit integer (both backends' integer type); `what`
/// names it in the error.
pub(crate) fn stored_u64(value: i64, what: &str) -> Result<u64, StoreError> {
    u64::try_from(value).map_err(|_| StoreError::Corrupt(format!("negative {what}: {value}")))
}

/// A history entry's `kind` column.
pub(crate) fn stored_history_kind(kind: &str) -> Result<HistoryKind, StoreError> {
    HistoryKind::parse(kind)
        .ok_or_else(|| StoreError::Corrupt(format!("unknown history kind {kind:?}")))
}

/// A history entry's `actor` column.
pub(crate) fn stored_actor(actor: &str) -> Result<Actor, StoreError> {
    Actor::parse(actor)
        .ok_or_else(|| StoreError::Corrupt(format!("unknown history actor {actor:?}")))
}

/// The documents of the rows of a documents ⟕ vectors join ordered by document id, each with
/// its embeddings: a document's first row gives the document (`document`), and every row with
/// vector columns one of its embeddings (`vector`, `None` for a document without vectors).
pub(crate) fn documents_from_join<R>(
    rows: &[R],
    id: impl Fn(&R) -> Result<String, StoreError>,
    document: impl Fn(&R) -> Result<StoredDocument, StoreError>,
    vector: impl Fn(&R) -> Result<Option<VectorInfo>, StoreError>,
) -> Result<Vec<StoredDocument>, StoreError> {
    let mut documents: Vec<StoredDocument> = Vec::new();
    for row in rows {
        let id = id(row)?;
        if documents.last().is_none_or(|d| d.id != id) {
            documents.push(document(row)?);
        }
        if let (Some(info), Some(last)) = (vector(row)?, documents.last_mut()) {
            last.embeddings.push(info);
        }
    }
    Ok(documents)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn values_no_write_stores_are_corrupt() {
        assert_eq!(stored_u64(7, "count").unwrap(), 7);
        assert!(
            matches!(stored_u64(-1, "count"), Err(StoreError::Corrupt(m)) if m == "negative count: -1")
        );
        assert!(matches!(
            stored_history_kind("nonsense"),
            Err(StoreError::Corrupt(_))
        ));
        assert!(matches!(
            stored_actor("nobody"),
            Err(StoreError::Corrupt(_))
        ));
        let kind = HistoryKind::GateOverridden;
        assert_eq!(stored_history_kind(kind.as_str()).unwrap(), kind);
        assert_eq!(
            stored_actor(Actor::Service.as_str()).unwrap(),
            Actor::Service
        );
    }
}
