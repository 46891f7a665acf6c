-- A stored state chunk found corrupted (its content no longer hashes to its
-- name) is marked: the store then reports it missing, so the next save
-- uploads it again, and that upload replaces the bad content.
ALTER TABLE state_chunks ADD COLUMN corrupted_at timestamptz;

-- Each commit clears the offsets snapshots of checkpoints that fell out of
-- retention: only the few that still have one are looked at (the job's
-- checkpoint history is never pruned).
CREATE INDEX checkpoints_with_snapshot ON checkpoints (job_id, checkpoint_id)
    WHERE offsets_snapshot IS NOT NULL;
