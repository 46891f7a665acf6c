#!/usr/bin/env bash
# Generates a TypeScript client from openapi/openapi.json (openapi-typescript
# + openapi-fetch, from npm, pinned in clients/typescript/package-lock.json),
# type-checks a test of the whole protocol against it, and runs that test
# under Node against the real service on a fresh database of its own. A
# document a generator trips on fails here. Idempotent; installs once.
set -euo pipefail
cd "$(dirname "$0")/.."
# shellcheck source=scripts/test-service.sh
. scripts/test-service.sh

(
  cd clients/typescript
  if [ ! -d node_modules ] || [ package-lock.json -nt node_modules ]; then
    npm ci --silent
  fi
  npm run --silent generate
  npm run --silent build
)

start_test_service sinkgate_typescript "${TYPESCRIPT_PORT:-18090}"
psql "$DB_URL" -qc 'CREATE TABLE ts_sink (id bigint NOT NULL, word text NOT NULL)'
(cd clients/typescript && SINKGATE_URL="$SERVICE_URL" npm test --silent)
