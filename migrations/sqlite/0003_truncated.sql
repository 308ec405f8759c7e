-- `truncated` counts the migration's processed documents whose target vector was embedded from
-- a text longer than the target model's `max_input_tokens` (API.md, progress): the server
-- truncated them. It moves in the same transaction that writes the target vector and dequeues
-- the document, like `processed`, so a crash can neither lose nor double-count one.
-- Migrations recorded before it had no input limits to compare against: theirs is 0.
ALTER TABLE migrations ADD COLUMN truncated INTEGER NOT NULL DEFAULT 0 CHECK (truncated >= 0);
