-- Acks no longer serialize on the job row or a counter: the claim of a
-- source partition by one task per checkpoint is enforced by this key.
CREATE TABLE ack_partitions (
    job_id           text NOT NULL,
    checkpoint_id    bigint NOT NULL,
    source_partition text NOT NULL,
    task_id          text NOT NULL,
    PRIMARY KEY (job_id, checkpoint_id, source_partition),
    FOREIGN KEY (job_id, checkpoint_id) REFERENCES checkpoints ON DELETE CASCADE
);
