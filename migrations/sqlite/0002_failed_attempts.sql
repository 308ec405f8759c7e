-- `failed` becomes the number of queued documents whose latest attempt failed (API.md,
-- progress), so it goes back down as they succeed. Each queue row remembers whether its
-- latest attempt failed; a row leaving the queue takes its flag with it.
ALTER TABLE backfill_queue ADD COLUMN failed INTEGER NOT NULL DEFAULT 0 CHECK (failed IN (0, 1));

-- Before, `failed` counted failed attempts and never went down; no row is flagged yet.
UPDATE migrations SET failed = 0;
