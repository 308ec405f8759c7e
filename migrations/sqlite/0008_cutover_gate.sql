-- An operator's cutover past a migration's gate (issue 14), as JSON `{"at", "reason"}`: it lets
-- queries switch and the migration complete whatever the evidence says.
ALTER TABLE migrations ADD COLUMN gate_override TEXT;

-- What the shadow reads showed, counted in the transaction that records the samples: the gate's
-- min_samples and min_overlap are judged on them (mean = overlap_sum / samples).
ALTER TABLE migrations ADD COLUMN shadow_samples INTEGER NOT NULL DEFAULT 0 CHECK (shadow_samples >= 0);
ALTER TABLE migrations ADD COLUMN shadow_overlap_sum REAL NOT NULL DEFAULT 0;
