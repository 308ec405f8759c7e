-- Backfill claims with leases (issue 13): a batch claims queued documents under a lease, and
-- only it may commit them while the lease holds. Times are unix milliseconds. The store runs in
-- one process, so it releases every lease when it opens (nothing from before a restart is in
-- flight).
ALTER TABLE backfill_queue ADD COLUMN claimed_by TEXT;
ALTER TABLE backfill_queue ADD COLUMN lease_expires_at INTEGER;

-- A claim finds its documents again (to renew or release them) by their id range in the
-- primary key, `claimed_by` telling them apart: no index on `claimed_by`, which every claim and
-- every commit would have to maintain.

-- The claims a migration holds: at most `config.max_concurrent` unexpired rows per migration,
-- one per slot, which bounds the batches in flight.
CREATE TABLE backfill_leases (
    migration_id TEXT NOT NULL REFERENCES migrations (id),
    slot         INTEGER NOT NULL CHECK (slot >= 0),
    token        TEXT NOT NULL UNIQUE,
    replica_id   TEXT NOT NULL,
    expires_at   INTEGER NOT NULL,
    PRIMARY KEY (migration_id, slot)
) STRICT;

-- What each replica's batches wrote for a migration (progress `replicas`).
CREATE TABLE backfill_replicas (
    migration_id TEXT NOT NULL REFERENCES migrations (id),
    replica_id   TEXT NOT NULL,
    processed    INTEGER NOT NULL DEFAULT 0 CHECK (processed >= 0),
    PRIMARY KEY (migration_id, replica_id)
) STRICT, WITHOUT ROWID;
