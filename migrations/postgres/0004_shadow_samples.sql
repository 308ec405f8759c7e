-- Shadow reads (issue 14): what `GET /v1/migrations/{id}/comparison` summarises, from the
-- samples of every replica. Each table is bounded per migration by the transactions that add to
-- it (src/store/postgres/shadow.rs); replicas flushing at once may briefly leave a few rows
-- more, which reads never return.

-- The figures of each shadowed query: overlap@k and each side's latency in milliseconds. The
-- newest 10,000 per migration are kept, so summarising stays cheap.
CREATE TABLE shadow_samples (
    seq          BIGINT GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    migration_id TEXT NOT NULL REFERENCES migrations (id),
    overlap      DOUBLE PRECISION NOT NULL CHECK (overlap BETWEEN 0 AND 1),
    source_ms    DOUBLE PRECISION NOT NULL,
    target_ms    DOUBLE PRECISION NOT NULL
);

-- Reads a migration's newest samples and finds the oldest to prune.
CREATE INDEX shadow_samples_by_migration ON shadow_samples (migration_id, seq);

-- The 20 lowest-overlap queries of each migration, for a person to inspect: the text (cut to
-- 1,000 characters) and each model's top k as arrays of document ids.
CREATE TABLE shadow_worst (
    seq          BIGINT GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    migration_id TEXT NOT NULL REFERENCES migrations (id),
    overlap      DOUBLE PRECISION NOT NULL,
    text         TEXT NOT NULL,
    source_hits  TEXT[] NOT NULL,
    target_hits  TEXT[] NOT NULL
);

-- Reads and prunes a migration's worst queries in overlap order.
CREATE INDEX shadow_worst_by_migration ON shadow_worst (migration_id, overlap, seq);

-- Shadowed queries dropped because the shadow queue was full, per migration, on every replica.
CREATE TABLE shadow_drops (
    migration_id TEXT PRIMARY KEY REFERENCES migrations (id),
    dropped      BIGINT NOT NULL CHECK (dropped >= 0)
);
