-- sinkgate's own metadata. Small, hot tables: one ack is one short transaction.
-- The user's sink tables are never created or altered here; per-job staging
-- tables live in the `sinkgate_staging` schema and are created at job registration.

CREATE SCHEMA IF NOT EXISTS sinkgate_staging;

CREATE TABLE jobs (
    job_id               text PRIMARY KEY,
    -- Sink: the user's table, as resolved at registration.
    sink_schema          text NOT NULL,
    sink_table           text NOT NULL,
    sink_mode            text NOT NULL CHECK (sink_mode IN ('append', 'upsert')),
    sink_key             text[] NOT NULL DEFAULT '{}',
    -- Snapshot of the sink's writable columns (name, type, nullability, default),
    -- used to convert rows to COPY text and to build the promotion statement.
    sink_columns         jsonb NOT NULL,
    -- Checkpointing settings; interval_ms NULL = only explicit triggers.
    interval_ms          bigint,
    timeout_ms           bigint NOT NULL,
    min_pause_ms         bigint NOT NULL,
    max_concurrent       integer NOT NULL,
    retained             integer NOT NULL,
    -- Protocol state. epoch 0 = never started.
    epoch                bigint NOT NULL DEFAULT 0,
    -- First checkpoint id of the current epoch: the tag of rows a task writes
    -- before its first ack in this epoch.
    epoch_first_checkpoint bigint NOT NULL DEFAULT 1,
    next_checkpoint_id   bigint NOT NULL DEFAULT 1,
    last_decided_id      bigint,
    last_committed_id    bigint,
    created_at           timestamptz NOT NULL DEFAULT now(),
    updated_at           timestamptz NOT NULL DEFAULT now()
);

CREATE TABLE tasks (
    job_id          text NOT NULL REFERENCES jobs ON DELETE CASCADE,
    task_id         text NOT NULL,
    ordinal         integer NOT NULL,
    -- Last checkpoint this task acked in the current epoch (reset by /attempts).
    last_acked_id   bigint,
    PRIMARY KEY (job_id, task_id)
);

CREATE TABLE checkpoints (
    job_id          text NOT NULL REFERENCES jobs ON DELETE CASCADE,
    checkpoint_id   bigint NOT NULL,
    epoch           bigint NOT NULL,
    status          text NOT NULL CHECK (status IN ('pending', 'completed', 'committed', 'aborted')),
    trigger_kind    text NOT NULL CHECK (trigger_kind IN ('manual', 'interval')),
    task_count      integer NOT NULL,
    acked_count     integer NOT NULL DEFAULT 0,
    triggered_at    timestamptz NOT NULL DEFAULT now(),
    decided_at      timestamptz,
    committed_at    timestamptz,
    aborted_at      timestamptz,
    failure_reason  text,
    -- Promotion: what was moved into the sink, and the last error if it failed.
    promoted_rows   bigint,
    promotion_ms    double precision,
    promotion_error text,
    promotion_attempts integer NOT NULL DEFAULT 0,
    -- Staged volume sealed into this checkpoint, recorded at its decision
    -- (while pending it is summed live from `batches`).
    staged_rows     bigint,
    staged_bytes    bigint,
    PRIMARY KEY (job_id, checkpoint_id)
);
CREATE INDEX checkpoints_pending ON checkpoints (job_id, checkpoint_id) WHERE status = 'pending';

CREATE TABLE acks (
    job_id          text NOT NULL,
    checkpoint_id   bigint NOT NULL,
    task_id         text NOT NULL,
    epoch           bigint NOT NULL,
    offsets         jsonb NOT NULL,
    state           jsonb,
    acked_at        timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (job_id, checkpoint_id, task_id),
    FOREIGN KEY (job_id, checkpoint_id) REFERENCES checkpoints ON DELETE CASCADE
);

-- Highest committed offset per source partition: recovery's merged offsets and
-- the offset-regression check.
CREATE TABLE committed_offsets (
    job_id          text NOT NULL REFERENCES jobs ON DELETE CASCADE,
    source_partition text NOT NULL,
    next_offset     bigint NOT NULL,
    checkpoint_id   bigint NOT NULL,
    PRIMARY KEY (job_id, source_partition)
);

-- Orders staged batches across tasks (last write wins in upsert mode). A
-- sequence, not a counter column, so that writes never lock each other.
CREATE SEQUENCE batch_seq;

-- One row per staged batch of the current epoch: makes retries idempotent and
-- gives per-checkpoint and per-task staging statistics without touching staging.
CREATE TABLE batches (
    job_id          text NOT NULL REFERENCES jobs ON DELETE CASCADE,
    epoch           bigint NOT NULL,
    task_id         text NOT NULL,
    batch_id        text NOT NULL,
    checkpoint_tag  bigint NOT NULL,
    batch_seq       bigint NOT NULL,
    staged_rows     bigint NOT NULL,
    staged_bytes    bigint NOT NULL,
    staged_at       timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (job_id, epoch, task_id, batch_id)
);
CREATE INDEX batches_by_tag ON batches (job_id, checkpoint_tag);
