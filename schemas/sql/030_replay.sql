-- Dead-letter replay lineage (python -m beam_pipelines.replay), added after
-- failed_events first shipped: existing databases get the columns too and
-- writers that do not know them keep working (all NULL for them).
--
-- Written with the dead letter (schemas.tables.failure_row), so an upsert of
-- the same failure always writes the same values:
--   replay_run_id   the replay run whose chain produced this dead letter
--   replay_of       the original dead letter (failure_id) it was a retry of
-- Written only by the replay's mark step, never by a sink's upsert (they are
-- not in the table's TableSpec), so a re-failure of the same record, or the
-- pipeline storing the same failure again, cannot overwrite them:
--   replayed_by     the replay run that took this dead letter
--   replayed_at     when its marks were written
--   replay_outcome  passed (now in the tables) | failed (see the dead letter
--                   with replay_run_id = replayed_by, replay_of = this id)
ALTER TABLE failed_events ADD COLUMN IF NOT EXISTS replay_run_id VARCHAR(64);
ALTER TABLE failed_events ADD COLUMN IF NOT EXISTS replay_of VARCHAR(64);
ALTER TABLE failed_events ADD COLUMN IF NOT EXISTS replayed_by VARCHAR(64);
ALTER TABLE failed_events ADD COLUMN IF NOT EXISTS replayed_at TIMESTAMP WITH TIME ZONE;
ALTER TABLE failed_events ADD COLUMN IF NOT EXISTS replay_outcome VARCHAR(20);
