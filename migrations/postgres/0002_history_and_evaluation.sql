-- A migration's history (issue 14): every transition, config change and automatic step, written
-- in the transaction that made the change, by whichever replica made it.
CREATE TABLE migration_history (
    seq          BIGINT GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    migration_id TEXT NOT NULL REFERENCES migrations (id),
    at           TIMESTAMPTZ NOT NULL,
    at_nanos     SMALLINT NOT NULL DEFAULT 0 CHECK (at_nanos BETWEEN 0 AND 999),
    kind         TEXT NOT NULL,
    detail       TEXT NOT NULL,
    replica      TEXT NOT NULL,
    actor        TEXT NOT NULL
);

CREATE INDEX migration_history_by_migration ON migration_history (migration_id, seq);

-- The last labelled evaluation of a migration's two models (`POST .../evaluate`): `json` keeps
-- the numbers as written. The cutover gate's `min_recall_ratio` reads it.
ALTER TABLE migrations ADD COLUMN last_evaluation json;
