-- Schema of the PostgreSQL store (src/store/postgres/): the same tables, with the same meaning,
-- as the SQLite store's (migrations/sqlite/), in PostgreSQL's own types.
--
-- Encodings:
--   * timestamps: TIMESTAMPTZ, which keeps microseconds; the nanoseconds below the microsecond
--     (0-999) go in a `*_nanos` column beside each, so a migration's times round-trip exactly as
--     on SQLite. SQL that compares times (the database clock) reads the TIMESTAMPTZ alone;
--   * vectors: pgvector's `vector`, without a dimension so that one table holds every model,
--     with the dimension stored beside it; bound and read as `real[]`;
--   * metadata: JSON, which keeps the text as written, so numbers round-trip digit for digit
--     (JSONB would normalise them); filters compare it as JSONB;
--   * migration config: JSONB;
--   * document ids: COLLATE "C", so that id order is byte order, as on SQLite, whatever the
--     database's locale (pages and streams go in id order);
--   * migration states: `MigrationState::as_str` names, with no CHECK (a new state needs no
--     table rewrite; an unknown name is reported as corrupt when read).
-- The `vector` extension is created by the store before this runs (it checks its version).

-- Single values of the service, such as `active_model`.
CREATE TABLE meta (
    key   TEXT PRIMARY KEY,
    value TEXT NOT NULL
);

CREATE TABLE documents (
    id       TEXT COLLATE "C" PRIMARY KEY,
    text     TEXT NOT NULL,
    metadata JSON NOT NULL,
    version  BIGINT NOT NULL CHECK (version >= 1)
);

-- The last version of each deleted document. A re-created id continues from it, so a
-- (id, version) pair never names two different texts and a backfill batch claimed before the
-- delete cannot pass compare-and-set against the re-created document.
CREATE TABLE document_tombstones (
    id      TEXT COLLATE "C" PRIMARY KEY,
    version BIGINT NOT NULL
);

-- One vector per (model, document), tagged with the document version it was embedded from;
-- a version older than the document's marks it stale. Deleting a document deletes its vectors.
-- Each model's approximate index (HNSW, a partial expression index on `embedding::vector(D)`
-- WHERE model = ...) is built at start-up for the models the service registers, not here:
-- see src/store/postgres/search.rs.
CREATE TABLE vectors (
    model      TEXT NOT NULL,
    doc_id     TEXT COLLATE "C" NOT NULL REFERENCES documents (id) ON DELETE CASCADE,
    version    BIGINT NOT NULL,
    dimensions INTEGER NOT NULL CHECK (dimensions = vector_dims(embedding)),
    embedding  vector NOT NULL,
    PRIMARY KEY (model, doc_id)
);

-- Reads one document's embeddings and serves the cascade from `documents`.
CREATE INDEX vectors_by_document ON vectors (doc_id);

-- One row per migration: its state and every count, changed only in transactions. `seq`
-- orders migrations: the latest is the one with the highest `seq` (rows are inserted under the
-- store's exclusive gate lock, so `seq` order is commit order).
CREATE TABLE migrations (
    seq                           BIGINT GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    id                            TEXT NOT NULL UNIQUE,
    source_model                  TEXT NOT NULL,
    target_model                  TEXT NOT NULL,
    config                        JSONB NOT NULL,
    state                         TEXT NOT NULL,
    created_at                    TIMESTAMPTZ NOT NULL,
    created_at_nanos              SMALLINT NOT NULL DEFAULT 0
                                  CHECK (created_at_nanos BETWEEN 0 AND 999),
    started_at                    TIMESTAMPTZ,
    started_at_nanos              SMALLINT NOT NULL DEFAULT 0
                                  CHECK (started_at_nanos BETWEEN 0 AND 999),
    completed_at                  TIMESTAMPTZ,
    completed_at_nanos            SMALLINT NOT NULL DEFAULT 0
                                  CHECK (completed_at_nanos BETWEEN 0 AND 999),
    rollback_window_ends_at       TIMESTAMPTZ,
    rollback_window_ends_at_nanos SMALLINT NOT NULL DEFAULT 0
                                  CHECK (rollback_window_ends_at_nanos BETWEEN 0 AND 999),
    error                         TEXT,
    pause_reason                  TEXT,
    total                         BIGINT NOT NULL DEFAULT 0 CHECK (total >= 0),
    processed                     BIGINT NOT NULL DEFAULT 0 CHECK (processed >= 0),
    skipped                       BIGINT NOT NULL DEFAULT 0 CHECK (skipped >= 0),
    failed                        BIGINT NOT NULL DEFAULT 0 CHECK (failed >= 0),
    truncated                     BIGINT NOT NULL DEFAULT 0 CHECK (truncated >= 0)
);

-- At most one migration backfilling at a time, enforced here rather than in one process's
-- memory: starting a second one (or resuming one while another runs) fails with a unique
-- violation, which the store reports as a conflict. `planned` is left out because storage
-- keeps several planned migrations, and "completed with its rollback window open" because it
-- depends on the clock; the coordinator refuses those (`Migration::is_open`).
CREATE UNIQUE INDEX migrations_one_backfilling ON migrations ((true))
    WHERE state IN ('in_progress', 'paused', 'failed');

-- The durable backfill checkpoint: the documents a migration still has to embed. A row leaves
-- in the same transaction that writes the target vector (or the skip) and moves the counts, so
-- a crash can neither skip a document nor count it twice. `failed`: the document's latest
-- attempt failed (the migration's `failed` counts these rows). `claimed_by` is the token of
-- the claim holding the document until `lease_expires_at` (database clock); only that claim,
-- before then, may take it off the queue. A document whose attempt failed keeps a lease of no
-- one's until its retry time.
CREATE TABLE backfill_queue (
    migration_id     TEXT NOT NULL REFERENCES migrations (id),
    doc_id           TEXT COLLATE "C" NOT NULL REFERENCES documents (id) ON DELETE CASCADE,
    failed           BOOLEAN NOT NULL DEFAULT false,
    claimed_by       TEXT,
    lease_expires_at TIMESTAMPTZ,
    PRIMARY KEY (migration_id, doc_id)
);

-- Serves the cascade from `documents`.
CREATE INDEX backfill_queue_by_document ON backfill_queue (doc_id);

-- Renewing or releasing a claim finds its documents.
CREATE INDEX backfill_queue_by_claim ON backfill_queue (claimed_by) WHERE claimed_by IS NOT NULL;

-- The claims a migration holds, across every replica: at most `config.max_concurrent`
-- unexpired rows per migration, one per slot, which bounds the batches in flight. Claims of one
-- migration take a transaction advisory lock on it, so two replicas never take one slot.
CREATE TABLE backfill_leases (
    migration_id TEXT NOT NULL REFERENCES migrations (id),
    slot         INTEGER NOT NULL CHECK (slot >= 0),
    token        TEXT NOT NULL UNIQUE,
    replica_id   TEXT NOT NULL,
    expires_at   TIMESTAMPTZ NOT NULL,
    PRIMARY KEY (migration_id, slot)
);

-- What each replica's batches wrote for a migration (progress `replicas`).
CREATE TABLE backfill_replicas (
    migration_id TEXT NOT NULL REFERENCES migrations (id),
    replica_id   TEXT NOT NULL,
    processed    BIGINT NOT NULL DEFAULT 0 CHECK (processed >= 0),
    PRIMARY KEY (migration_id, replica_id)
);

-- Documents a backfill gave up on. No key on (migration_id, doc_id): a document re-queued by a
-- later write can be skipped again, and each skip is counted.
CREATE TABLE skips (
    seq          BIGINT GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    migration_id TEXT NOT NULL REFERENCES migrations (id),
    doc_id       TEXT COLLATE "C" NOT NULL,
    reason       TEXT NOT NULL,
    at           TIMESTAMPTZ NOT NULL
);

CREATE INDEX skips_by_migration ON skips (migration_id, seq);
