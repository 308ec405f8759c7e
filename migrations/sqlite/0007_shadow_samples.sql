-- Shadow reads (issue 14): what `GET /v1/migrations/{id}/comparison` summarises. Every table is
-- bounded per migration by the transaction that adds to it (src/store/sqlite/shadow.rs).

-- The figures of each shadowed query: overlap@k and each side's latency in milliseconds. Only
-- the newest 10,000 per migration are kept, so summarising stays cheap.
CREATE TABLE shadow_samples (
    seq          INTEGER PRIMARY KEY AUTOINCREMENT,
    migration_id TEXT NOT NULL REFERENCES migrations (id),
    overlap      REAL NOT NULL CHECK (overlap BETWEEN 0 AND 1),
    source_ms    REAL NOT NULL,
    target_ms    REAL NOT NULL
) STRICT;

-- Reads a migration's newest samples and finds the oldest to prune.
CREATE INDEX shadow_samples_by_migration ON shadow_samples (migration_id, seq);

-- The 20 lowest-overlap queries of each migration, for a person to inspect: the text (cut to
-- 1,000 characters) and each model's top k as JSON arrays of document ids.
CREATE TABLE shadow_worst (
    seq          INTEGER PRIMARY KEY AUTOINCREMENT,
    migration_id TEXT NOT NULL REFERENCES migrations (id),
    overlap      REAL NOT NULL,
    text         TEXT NOT NULL,
    source_hits  TEXT NOT NULL,
    target_hits  TEXT NOT NULL
) STRICT;

-- Reads and prunes a migration's worst queries in overlap order.
CREATE INDEX shadow_worst_by_migration ON shadow_worst (migration_id, overlap, seq);

-- Shadowed queries dropped because the shadow queue was full, per migration.
CREATE TABLE shadow_drops (
    migration_id TEXT PRIMARY KEY NOT NULL REFERENCES migrations (id),
    dropped      INTEGER NOT NULL CHECK (dropped >= 0)
) STRICT;
