-- `tokens_embedded` counts the tokens the migration's backfill batches were billed for (issue 14,
-- API.md progress): the provider's `usage` when its answer reports it, else the estimate
-- (characters / 4, rounded up). It moves in the same transaction that commits the batch's
-- vectors, like `processed`, so it survives restarts and sums the batches of every replica.
ALTER TABLE migrations ADD COLUMN tokens_embedded BIGINT NOT NULL DEFAULT 0 CHECK (tokens_embedded >= 0);
