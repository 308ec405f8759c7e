-- The deletion of a switched migration's source vectors (issue 14): counted in the
-- transactions that delete them, by whichever replicas do; `cleanup_done_at` once the last is
-- gone.
ALTER TABLE migrations ADD COLUMN source_vectors_deleted BIGINT NOT NULL DEFAULT 0
    CHECK (source_vectors_deleted >= 0);
ALTER TABLE migrations ADD COLUMN cleanup_done_at TIMESTAMPTZ;
ALTER TABLE migrations ADD COLUMN cleanup_done_at_nanos SMALLINT NOT NULL DEFAULT 0
    CHECK (cleanup_done_at_nanos BETWEEN 0 AND 999);
