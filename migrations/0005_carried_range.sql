-- Which staged batches a decided checkpoint's promotion carries: checkpoint
-- tags in (carried_after, checkpoint_id]. Recorded at decision, so that its
-- staged volume (in all and per task) is counted once, and a checkpoint
-- completed by a newer one's decision carries nothing of its own
-- (docs/DESIGN.md, "Checkpoints"). NULL for checkpoints decided before.
ALTER TABLE checkpoints ADD COLUMN carried_after bigint;
