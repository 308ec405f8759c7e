-- The deletion of a switched migration's source vectors (issue 14): counted in the
-- transactions that delete them; `cleanup_done_at` (RFC 3339) once the last is gone.
ALTER TABLE migrations ADD COLUMN source_vectors_deleted INTEGER NOT NULL DEFAULT 0
    CHECK (source_vectors_deleted >= 0);
ALTER TABLE migrations ADD COLUMN cleanup_done_at TEXT;
