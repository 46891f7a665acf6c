-- The checkpoint's other half: state (docs/DESIGN.md, "State").

-- The built-in state store: content-addressed chunks, per job (a job never
-- learns what another job stores). A task's state for a checkpoint is the
-- ordered list of its chunks' SHA-256, given in its ack.
CREATE TABLE state_chunks (
    job_id       text NOT NULL REFERENCES jobs ON DELETE CASCADE,
    sha256       bytea NOT NULL,
    size_bytes   integer NOT NULL,
    content      bytea NOT NULL,
    -- Uploaded, or reported present to a task about to reference it: the
    -- collector leaves a chunk this recent alone, referenced or not.
    last_used_at timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (job_id, sha256)
);
-- State is often compressed already; storing it as is avoids a
-- compression attempt per chunk.
ALTER TABLE state_chunks ALTER COLUMN content SET STORAGE EXTERNAL;

-- Which acks use which chunks. An ack's references go with it (retention
-- prunes old acks; a job's deletion takes everything), and a chunk no ack
-- references is collected.
CREATE TABLE state_refs (
    job_id        text NOT NULL,
    checkpoint_id bigint NOT NULL,
    task_id       text NOT NULL,
    sha256        bytea NOT NULL,
    PRIMARY KEY (job_id, sha256, checkpoint_id, task_id),
    FOREIGN KEY (job_id, checkpoint_id, task_id) REFERENCES acks ON DELETE CASCADE,
    FOREIGN KEY (job_id, sha256) REFERENCES state_chunks
);
CREATE INDEX state_refs_by_ack ON state_refs (job_id, checkpoint_id, task_id);

-- Shared external state: objects a task keeps in its own store, listed in
-- its acks. An object no retained ack references may be deleted by its
-- owner; once the owner says it released it, no ack may reference it again.
CREATE TABLE external_objects (
    job_id      text NOT NULL REFERENCES jobs ON DELETE CASCADE,
    uri         text NOT NULL,
    released_at timestamptz,
    PRIMARY KEY (job_id, uri)
);
CREATE TABLE external_refs (
    job_id        text NOT NULL,
    checkpoint_id bigint NOT NULL,
    task_id       text NOT NULL,
    uri           text NOT NULL,
    PRIMARY KEY (job_id, uri, checkpoint_id, task_id),
    FOREIGN KEY (job_id, checkpoint_id, task_id) REFERENCES acks ON DELETE CASCADE,
    FOREIGN KEY (job_id, uri) REFERENCES external_objects
);
CREATE INDEX external_refs_by_ack ON external_refs (job_id, checkpoint_id, task_id);

-- Savepoints: decided checkpoints with a label, kept (acks, state, offsets)
-- until deleted, whatever `retained` says.
CREATE TABLE savepoints (
    job_id        text NOT NULL,
    checkpoint_id bigint NOT NULL,
    label         text NOT NULL,
    created_at    timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (job_id, checkpoint_id),
    UNIQUE (job_id, label),
    FOREIGN KEY (job_id, checkpoint_id) REFERENCES checkpoints ON DELETE CASCADE
);

-- The merged offsets as of each decision (every partition ever committed),
-- kept as long as the checkpoint's acks: what a restart from that
-- checkpoint resumes from.
ALTER TABLE checkpoints ADD COLUMN offsets_snapshot jsonb;

-- Set by an attempt that restarts from an older checkpoint: the recovery
-- point until the next decision.
ALTER TABLE jobs ADD COLUMN restored_from bigint;
