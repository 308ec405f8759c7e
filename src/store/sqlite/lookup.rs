//! Reading a few rows by key on a request's path — the documents a query returns — with
//! rusqlite on a blocking thread and a kept read-only connection, in one hand-off.
//!
//! sqlx hands each row to the calling task through a channel (see `bulk`): for the ten hits
//! of a query that cost ~0.28 ms p50 with every page cached (1M documents), against ~0.05 ms
//! for one. Here the lookup runs on one blocking thread, and its rows cross back at once.

use std::path::PathBuf;
use std::sync::{Arc, Mutex, PoisonError};

use rusqlite::Connection;

use super::bulk::{column, open_read_only, stopped, unavailable};
use super::codec::{parse_metadata, stored_u64};
use crate::store::{StoreError, StoredDocument};

/// Connections kept open between lookups: as many as lookups usually run at once.
const KEPT: usize = 4;

/// Read-only connections to the database file for lookups, opened as needed and kept.
pub struct Lookups {
    path: PathBuf,
    idle: Arc<Mutex<Idle>>,
}

/// The connections not in use; none once closed.
#[derive(Default)]
struct Idle {
    connections: Vec<Connection>,
    closed: bool,
}

impl Lookups {
    /// Lookups in the database file at `path`; no connection is opened until one is needed.
    pub fn new(path: PathBuf) -> Self {
        Self {
            path,
            idle: Arc::default(),
        }
    }

    /// The documents of `ids` that exist, without their embeddings, in no particular order.
    pub async fn documents(&self, ids: &[String]) -> Result<Vec<StoredDocument>, StoreError> {
        if ids.is_empty() {
            return Ok(Vec::new());
        }
        // One JSON array bind instead of one placeholder per id: no limit on the id count.
        let ids = serde_json::to_string(ids).map_err(|e| StoreError::Corrupt(e.to_string()))?;
        self.run(move |connection| read_documents(connection, &ids))
            .await
    }

    /// Closes the kept connections, and every one in use as its lookup ends, and refuses
    /// lookups from now on: the store's last connection to close must be its writer, which
    /// checkpoints the WAL.
    pub fn close(&self) {
        let mut idle = lock(&self.idle);
        idle.closed = true;
        idle.connections.clear();
    }

    /// Runs `read` on a blocking thread with a kept connection, or a new one.
    async fn run<T: Send + 'static>(
        &self,
        read: impl FnOnce(&Connection) -> Result<T, StoreError> + Send + 'static,
    ) -> Result<T, StoreError> {
        let (path, idle) = (self.path.clone(), Arc::clone(&self.idle));
        tokio::task::spawn_blocking(move || {
            let kept = {
                let mut idle = lock(&idle);
                if idle.closed {
                    return Err(StoreError::Unavailable("the database is closed".to_owned()));
                }
                idle.connections.pop()
            };
            let connection = match kept {
                Some(connection) => connection,
                None => open_read_only(&path)?,
            };
            let result = read(&connection);
            let mut idle = lock(&idle);
            if !idle.closed && idle.connections.len() < KEPT {
                idle.connections.push(connection);
            }
            result
        })
        .await
        .map_err(|_| stopped())?
    }
}

fn read_documents(connection: &Connection, ids: &str) -> Result<Vec<StoredDocument>, StoreError> {
    let mut statement = connection
        .prepare_cached(
            "SELECT id, text, metadata, version FROM documents
             WHERE id IN (SELECT value FROM json_each(?1))",
        )
        .map_err(unavailable)?;
    let mut rows = statement.query([ids]).map_err(unavailable)?;
    let mut documents = Vec::new();
    while let Some(row) = rows.next().map_err(unavailable)? {
        let metadata: String = column(row, 2)?;
        documents.push(StoredDocument {
            id: column(row, 0)?,
            text: column(row, 1)?,
            metadata: parse_metadata(&metadata)?,
            version: stored_u64(column(row, 3)?, "document version")?,
            embeddings: Vec::new(),
        });
    }
    Ok(documents)
}

// The idle list holds no invariant a panic could break.
fn lock(idle: &Mutex<Idle>) -> std::sync::MutexGuard<'_, Idle> {
    idle.lock().unwrap_or_else(PoisonError::into_inner)
}
