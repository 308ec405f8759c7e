//! Reading every row of a large query — all of a model's vectors, all documents' metadata —
//! as start-up does.
//!
//! sqlx runs SQLite on a worker thread and hands each row to the calling task through a
//! channel: a wake-up and a thread switch per row, and each row's memory freed on another
//! thread than allocated it. At start-up that was the largest cost (perf, 100k vectors: ~22%
//! of the samples in futex wake-ups and waits). Here the query runs with rusqlite — the same
//! SQLite library, `libsqlite3-sys` 0.30, which sqlx links too — on a blocking thread of its
//! own with a read-only connection, and its rows cross to the caller in pages of [`PAGE`].

use std::path::PathBuf;

use futures_util::StreamExt;
use futures_util::stream::{self, BoxStream};
use rusqlite::{Connection, OpenFlags, Row};
use tokio::sync::mpsc;

use super::BUSY_TIMEOUT;
use crate::store::StoreError;

/// Rows per page: enough that a page's hand-off costs little per row, few enough that the two
/// pages in flight hold little memory (about 3 MB of 384-dimension vectors).
const PAGE: usize = 1024;

/// Pages the reading thread may be ahead of the caller.
const PAGES_AHEAD: usize = 2;

/// What the reading thread sends: rows, then the end — so that a thread that died is told
/// from a query that ended.
enum Page<T> {
    Rows(Vec<T>),
    End,
}

/// The rows of `sql` with `params` bound, each decoded by `decode`, from the database file at
/// `path`. Dropping the stream stops the reading.
pub fn rows<T: Send + 'static>(
    path: PathBuf,
    sql: &'static str,
    params: Vec<String>,
    decode: fn(&Row<'_>) -> Result<T, StoreError>,
) -> BoxStream<'static, Result<T, StoreError>> {
    let (pages, received) = mpsc::channel(PAGES_AHEAD);
    tokio::task::spawn_blocking(move || {
        if let Err(error) = read(&path, sql, &params, decode, &pages) {
            let _ = pages.blocking_send(Err(error));
        }
    });
    stream::unfold(Some(received), |received| async move {
        let mut received = received?;
        match received.recv().await {
            Some(Ok(Page::Rows(rows))) => Some((Ok(rows), Some(received))),
            Some(Ok(Page::End)) => None,
            Some(Err(error)) => Some((Err(error), None)),
            None => Some((Err(stopped()), None)),
        }
    })
    .flat_map(|page| match page {
        Ok(rows) => stream::iter(rows.into_iter().map(Ok)).left_stream(),
        Err(error) => stream::iter([Err(error)]).right_stream(),
    })
    .boxed()
}

/// Runs the query and sends its rows in pages, then the end; returns early, quietly, once the
/// caller has dropped the stream.
fn read<T>(
    path: &std::path::Path,
    sql: &str,
    params: &[String],
    decode: fn(&Row<'_>) -> Result<T, StoreError>,
    pages: &mpsc::Sender<Result<Page<T>, StoreError>>,
) -> Result<(), StoreError> {
    let connection = open_read_only(path)?;
    let mut statement = connection.prepare(sql).map_err(unavailable)?;
    let mut rows = statement
        .query(rusqlite::params_from_iter(params))
        .map_err(unavailable)?;
    let mut page = Vec::with_capacity(PAGE);
    while let Some(row) = rows.next().map_err(unavailable)? {
        page.push(decode(row)?);
        if page.len() == PAGE {
            let full = std::mem::replace(&mut page, Vec::with_capacity(PAGE));
            if pages.blocking_send(Ok(Page::Rows(full))).is_err() {
                return Ok(());
            }
        }
    }
    if !page.is_empty() && pages.blocking_send(Ok(Page::Rows(page))).is_err() {
        return Ok(());
    }
    let _ = pages.blocking_send(Ok(Page::End));
    Ok(())
}

/// The `index`-th column of a row read here (by position: a lookup by name costs more than
/// decoding a small value, a million times over); a value of the wrong type is corruption.
pub fn column<T: rusqlite::types::FromSql>(row: &Row<'_>, index: usize) -> Result<T, StoreError> {
    row.get(index)
        .map_err(|e| StoreError::Corrupt(format!("column {index}: {e}")))
}

/// A read-only connection of rusqlite's to the database file at `path`, waiting for locks as
/// the store's own connections do.
pub(super) fn open_read_only(path: &std::path::Path) -> Result<Connection, StoreError> {
    let flags = OpenFlags::SQLITE_OPEN_READ_ONLY | OpenFlags::SQLITE_OPEN_NO_MUTEX;
    let connection = Connection::open_with_flags(path, flags).map_err(unavailable)?;
    connection.busy_timeout(BUSY_TIMEOUT).map_err(unavailable)?;
    Ok(connection)
}

pub(super) fn unavailable(error: rusqlite::Error) -> StoreError {
    StoreError::Unavailable(format!("reading the database: {error}"))
}

pub(super) fn stopped() -> StoreError {
    StoreError::Unavailable("the thread reading the database stopped".to_owned())
}
