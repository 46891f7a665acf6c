#!/usr/bin/env bash
# Runs schemathesis (from PyPI, in a virtualenv under target/) against the
# service's own openapi/openapi.json: random and boundary inputs for every
# operation, checking for server errors, undocumented status codes, response
# schema and content-type conformance. Uses a fresh database of its own.
set -euo pipefail
cd "$(dirname "$0")/.."
# shellcheck source=scripts/test-service.sh
. scripts/test-service.sh

VENV=target/schemathesis-venv
if [ ! -x "$VENV/bin/st" ]; then
  python3 -m venv "$VENV"
  "$VENV/bin/pip" install --quiet 'schemathesis>=4,<5'
fi

start_test_service sinkgate_schemathesis "${SCHEMATHESIS_PORT:-18089}"

# A job for the generated requests to aim at (see scripts/schemathesis.toml).
psql "$DB_URL" -qc 'CREATE TABLE st_sink (id bigint PRIMARY KEY, word text NOT NULL, n bigint, doc jsonb)'
curl -sf -X PUT "$SERVICE_URL/v1/jobs/st" -H 'content-type: application/json' \
  -d '{"tasks": ["task-0", "task-1"], "sink": {"table": "st_sink", "mode": "upsert", "key": ["id"]}}' >/dev/null
curl -sf -X POST "$SERVICE_URL/v1/jobs/st/attempts" >/dev/null
curl -sf -X POST "$SERVICE_URL/v1/jobs/st/checkpoints" -H 'content-type: application/json' \
  -d '{"epoch": 1}' >/dev/null

SCHEMATHESIS_HOOKS=schemathesis_hooks PYTHONPATH=scripts "$VENV/bin/st" --config-file scripts/schemathesis.toml \
  run openapi/openapi.json \
  --url "$SERVICE_URL" \
  --checks not_a_server_error,status_code_conformance,response_schema_conformance,content_type_conformance \
  --max-examples "${SCHEMATHESIS_EXAMPLES:-20}" \
  --seed "${SCHEMATHESIS_SEED:-1}" \
  --request-timeout 70 \
  "$@"
