-- Several outputs per job, deletes and partial updates (docs/DESIGN.md,
-- "Outputs").
--
-- A job's sink moves from `jobs` to `job_outputs`: one row per named
-- output, each a table with its own mode, key and staging table. A job
-- registered with one `sink` has one output, named `default`; existing jobs
-- become exactly that, keeping their staging tables (the output takes the
-- job's staging id, so the tables' names stay).

CREATE TABLE job_outputs (
    job_id             text NOT NULL REFERENCES jobs ON DELETE CASCADE,
    output             text NOT NULL,
    -- Declaration order: outputs are promoted in it (a table whose foreign
    -- key points at another output's rows comes after it).
    ordinal            integer NOT NULL,
    -- Names the output's staging table (`sinkgate_staging.job_<n>`). Drawn
    -- from the same sequence as `jobs.staging_id`, so no two outputs of any
    -- jobs ever share a table name.
    staging_id         bigint NOT NULL UNIQUE
                       DEFAULT nextval(pg_get_serial_sequence('jobs', 'staging_id')::regclass),
    sink_schema        text NOT NULL,
    sink_table         text NOT NULL,
    sink_mode          text NOT NULL CHECK (sink_mode IN ('append', 'upsert', 'first_write_wins')),
    sink_key           text[] NOT NULL DEFAULT '{}',
    sink_columns       jsonb NOT NULL,
    on_promotion_error text NOT NULL CHECK (on_promotion_error IN ('block', 'dead_letter')),
    -- Upsert only: a row updates the columns it carries and leaves the
    -- others as they are.
    partial_updates    boolean NOT NULL DEFAULT false,
    PRIMARY KEY (job_id, output)
);

INSERT INTO job_outputs (job_id, output, ordinal, staging_id, sink_schema, sink_table, sink_mode,
                         sink_key, sink_columns, on_promotion_error)
SELECT job_id, 'default', 1, staging_id, sink_schema, sink_table, sink_mode, sink_key,
       sink_columns, on_promotion_error
FROM jobs;

-- `jobs.staging_id` stays: it names the job's writer sessions (which a
-- fence ends), no longer any table.
ALTER TABLE jobs DROP COLUMN sink_schema, DROP COLUMN sink_table, DROP COLUMN sink_mode,
                 DROP COLUMN sink_key, DROP COLUMN sink_columns, DROP COLUMN on_promotion_error;

-- A staged row can be a delete by key (upsert outputs): NULL or false is an
-- upsert. Added to every existing staging table (partitions follow).
DO $$
DECLARE
    output record;
BEGIN
    -- A sink column of that name (allowed before) would collide: stop with
    -- a message that says which, rather than fail on the ALTER.
    FOR output IN SELECT o.job_id, c ->> 'name' AS name FROM job_outputs o, jsonb_array_elements(o.sink_columns) c
                  WHERE c ->> 'name' IN ('_sinkgate_delete', '_sinkgate_op') LOOP
        RAISE EXCEPTION 'job % has a sink column named %, which sinkgate now uses itself; rename the column (and PUT the job again) before upgrading', output.job_id, output.name;
    END LOOP;
    FOR output IN SELECT staging_id FROM job_outputs LOOP
        IF to_regclass(format('sinkgate_staging.%I', 'job_' || output.staging_id)) IS NOT NULL THEN
            EXECUTE format('ALTER TABLE sinkgate_staging.%I ADD COLUMN _sinkgate_delete boolean',
                           'job_' || output.staging_id);
        END IF;
    END LOOP;
END $$;

-- Each batch goes to one output; a retry naming another output is a
-- different batch (409 batch-conflict).
ALTER TABLE batches ADD COLUMN output text NOT NULL DEFAULT 'default';
-- Deletes staged by the batch: a promotion runs its delete statement only
-- when some were staged.
ALTER TABLE batches ADD COLUMN staged_deletes bigint NOT NULL DEFAULT 0;

ALTER TABLE dead_letters ADD COLUMN output text NOT NULL DEFAULT 'default';

-- Rows each output's promotion changed (inserted, updated or deleted), by
-- output name; NULL for checkpoints committed before.
ALTER TABLE checkpoints ADD COLUMN promoted_outputs jsonb;
