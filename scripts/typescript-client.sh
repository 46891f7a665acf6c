#!/usr/bin/env bash
# Generates a TypeScript client from openapi/openapi.json (openapi-typescript
# + openapi-fetch, from npm, pinned in clients/typescript/package-lock.json),
# type-checks a test of the whole protocol against it, and runs that test
# under Node against the real service on a fresh database of its own. A
# document a generator trips on fails here. Idempotent; installs once.
set -euo pipefail
cd "$(dirname "$0")/.."
BASE_URL=$(scripts/postgres.sh)
DB_URL="${BASE_URL%/*}/sinkgate_typescript"
psql "$BASE_URL" -qc 'DROP DATABASE IF EXISTS sinkgate_typescript' -c 'CREATE DATABASE sinkgate_typescript'
psql "$DB_URL" -qc 'CREATE TABLE ts_sink (id bigint NOT NULL, word text NOT NULL)'

(
  cd clients/typescript
  if [ ! -d node_modules ] || [ package-lock.json -nt node_modules ]; then
    npm ci --silent
  fi
  npm run --silent generate
  npm run --silent build
)

cargo build --quiet --bin sinkgate
PORT=${TYPESCRIPT_PORT:-18090}
DATABASE_URL="$DB_URL" RUST_LOG=warn target/debug/sinkgate serve --insecure-no-auth --listen "127.0.0.1:$PORT" &
SERVER=$!
trap 'kill $SERVER 2>/dev/null || true; wait $SERVER 2>/dev/null || true; psql "$BASE_URL" -qc "DROP DATABASE IF EXISTS sinkgate_typescript" || true' EXIT
for _ in $(seq 1 100); do
  curl -sf "http://127.0.0.1:$PORT/readyz" >/dev/null && break
  sleep 0.1
done
# Ours, not another service holding the port.
kill -0 "$SERVER" 2>/dev/null || { echo "[typescript-client.sh] sinkgate did not start" >&2; exit 1; }
(cd clients/typescript && SINKGATE_URL="http://127.0.0.1:$PORT" npm test --silent)
