-- Append outputs whose every value the service checks itself stage each
-- batch as its COPY text, about 1 MiB per row of staging (see
-- src/sink/staging.rs): two staging columns more, the text (stored out of
-- line and uncompressed) and the names of the columns it holds, in order;
-- and per batch the number of such rows.
ALTER TABLE batches ADD COLUMN staged_chunks integer NOT NULL DEFAULT 0;

DO $$
DECLARE
    output record;
BEGIN
    FOR output IN SELECT o.job_id, c ->> 'name' AS name FROM job_outputs o, jsonb_array_elements(o.sink_columns) c
                  WHERE c ->> 'name' IN ('_sinkgate_chunk', '_sinkgate_columns') LOOP
        RAISE EXCEPTION 'job % has a sink column named %, which sinkgate now uses itself; rename the column (and PUT the job again) before upgrading', output.job_id, output.name;
    END LOOP;
    FOR output IN SELECT staging_id FROM job_outputs LOOP
        IF to_regclass(format('sinkgate_staging.%I', 'job_' || output.staging_id)) IS NOT NULL THEN
            EXECUTE format('ALTER TABLE sinkgate_staging.%I ADD COLUMN _sinkgate_chunk bytea, ADD COLUMN _sinkgate_columns text[]',
                           'job_' || output.staging_id);
            EXECUTE format('ALTER TABLE sinkgate_staging.%I ALTER COLUMN _sinkgate_chunk SET STORAGE EXTERNAL',
                           'job_' || output.staging_id);
        END IF;
    END LOOP;
END $$;
