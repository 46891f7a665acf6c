-- Each commit clears the offsets snapshots of checkpoints that fell out of
-- retention: only the few that still have one are looked at (the job's
-- checkpoint history is never pruned).
CREATE INDEX checkpoints_with_snapshot ON checkpoints (job_id, checkpoint_id)
    WHERE offsets_snapshot IS NOT NULL;
