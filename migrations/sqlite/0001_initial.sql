-- Schema of the embedded SQLite store (src/store/sqlite.rs).
--
-- Encodings, chosen so that every value round-trips exactly:
--   * timestamps: RFC 3339 UTC text with nine fraction digits ("2024-05-01T12:00:00.123456789Z");
--     fixed width, so text order is time order, and nanoseconds survive a restart;
--   * vectors: little-endian f32 blobs, 4 bytes per dimension;
--   * metadata and migration config: JSON text;
--   * migration states: `MigrationState::as_str` names. No CHECK on them, so a new state needs no
--     table rebuild; an unknown name is reported as corrupt when read.
-- Tables are STRICT so a wrongly typed bind fails loudly instead of being stored as-is.

-- Single values of the service, such as `active_model`.
CREATE TABLE meta (
    key   TEXT PRIMARY KEY NOT NULL,
    value TEXT NOT NULL
) STRICT;

CREATE TABLE documents (
    id       TEXT PRIMARY KEY NOT NULL,
    text     TEXT NOT NULL,
    metadata TEXT NOT NULL,
    version  INTEGER NOT NULL CHECK (version >= 1)
) STRICT;

-- The last version of each deleted document. A re-created id continues from it, so a
-- (id, version) pair never names two different texts and a backfill batch claimed before the
-- delete cannot pass compare-and-set against the re-created document.
CREATE TABLE document_tombstones (
    id      TEXT PRIMARY KEY NOT NULL,
    version INTEGER NOT NULL
) STRICT;

-- One vector per (model, document), tagged with the document version it was embedded from;
-- a version older than the document's marks it stale. Deleting a document deletes its vectors.
CREATE TABLE vectors (
    model      TEXT NOT NULL,
    doc_id     TEXT NOT NULL REFERENCES documents (id) ON DELETE CASCADE,
    version    INTEGER NOT NULL,
    dimensions INTEGER NOT NULL,
    data       BLOB NOT NULL CHECK (length(data) = 4 * dimensions),
    PRIMARY KEY (model, doc_id)
) STRICT;

-- Reads one document's embeddings and serves the cascade from `documents`.
CREATE INDEX vectors_by_document ON vectors (doc_id);

-- `seq` orders migrations: the latest migration is the one with the highest `seq`.
CREATE TABLE migrations (
    seq                     INTEGER PRIMARY KEY AUTOINCREMENT,
    id                      TEXT NOT NULL UNIQUE,
    source_model            TEXT NOT NULL,
    target_model            TEXT NOT NULL,
    config                  TEXT NOT NULL,
    state                   TEXT NOT NULL,
    created_at              TEXT NOT NULL,
    started_at              TEXT,
    completed_at            TEXT,
    rollback_window_ends_at TEXT,
    error                   TEXT,
    pause_reason            TEXT,
    total                   INTEGER NOT NULL DEFAULT 0 CHECK (total >= 0),
    processed               INTEGER NOT NULL DEFAULT 0 CHECK (processed >= 0),
    skipped                 INTEGER NOT NULL DEFAULT 0 CHECK (skipped >= 0),
    failed                  INTEGER NOT NULL DEFAULT 0 CHECK (failed >= 0)
) STRICT;

-- The durable backfill checkpoint: the documents a migration still has to embed. A row leaves
-- in the same transaction that writes the target vector (or the skip) and moves the counts, so
-- a crash can neither skip a document nor count it twice.
CREATE TABLE backfill_queue (
    migration_id TEXT NOT NULL REFERENCES migrations (id),
    doc_id       TEXT NOT NULL REFERENCES documents (id) ON DELETE CASCADE,
    PRIMARY KEY (migration_id, doc_id)
) STRICT, WITHOUT ROWID;

-- Serves the cascade from `documents`.
CREATE INDEX backfill_queue_by_document ON backfill_queue (doc_id);

-- Documents a backfill gave up on. No key on (migration_id, doc_id): a document re-queued by a
-- later write can be skipped again, and each skip is counted.
CREATE TABLE skips (
    seq          INTEGER PRIMARY KEY,
    migration_id TEXT NOT NULL REFERENCES migrations (id),
    doc_id       TEXT NOT NULL,
    reason       TEXT NOT NULL,
    at           TEXT NOT NULL
) STRICT;

CREATE INDEX skips_by_migration ON skips (migration_id, seq);
