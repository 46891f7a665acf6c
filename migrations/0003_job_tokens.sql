-- Per-job processor tokens. Only a SHA-256 of the secret is stored; the
-- token is shown once, at creation.
CREATE TABLE job_tokens (
    token_id     text PRIMARY KEY,
    job_id       text NOT NULL REFERENCES jobs ON DELETE CASCADE,
    secret_sha256 bytea NOT NULL,
    label        text NOT NULL DEFAULT '',
    created_at   timestamptz NOT NULL DEFAULT now(),
    revoked_at   timestamptz
);
CREATE INDEX job_tokens_by_job ON job_tokens (job_id);
