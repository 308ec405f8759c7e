-- A migration's history (issue 14): every transition, config change and automatic step, written
-- in the transaction that made the change. `at` is RFC 3339 like the migration's own times.
CREATE TABLE migration_history (
    seq          INTEGER PRIMARY KEY AUTOINCREMENT,
    migration_id TEXT NOT NULL REFERENCES migrations (id),
    at           TEXT NOT NULL,
    kind         TEXT NOT NULL,
    detail       TEXT NOT NULL,
    replica      TEXT NOT NULL,
    actor        TEXT NOT NULL
) STRICT;

CREATE INDEX migration_history_by_migration ON migration_history (migration_id, seq);

-- The last labelled evaluation of a migration's two models (`POST .../evaluate`), as JSON: the
-- cutover gate's `min_recall_ratio` reads it.
ALTER TABLE migrations ADD COLUMN last_evaluation TEXT;
