-- A third sink mode: the first write of a key wins (INSERT … ON CONFLICT
-- DO NOTHING), within a checkpoint and across checkpoints.
ALTER TABLE jobs DROP CONSTRAINT jobs_sink_mode_check;
ALTER TABLE jobs ADD CONSTRAINT jobs_sink_mode_check
    CHECK (sink_mode IN ('append', 'upsert', 'first_write_wins'));
