# Sourced (not run) by the scripts that test the built binary over HTTP
# (scripts/schemathesis.sh, scripts/typescript-client.sh):
#
#   start_test_service NAME PORT
#
# builds the binary, creates a fresh database NAME, starts `sinkgate serve`
# on it (authentication off) at 127.0.0.1:PORT and waits until it is ready
# and it is ours that answers (not another service holding the port). Sets
# BASE_URL (the server), DB_URL (the fresh database) and SERVICE_URL. The
# service stops and the database is dropped when the calling script exits.

start_test_service() {
  TEST_DB_NAME=$1
  local port=$2
  BASE_URL=$(scripts/postgres.sh)
  DB_URL="${BASE_URL%/*}/$TEST_DB_NAME"
  SERVICE_URL="http://127.0.0.1:$port"
  psql "$BASE_URL" -qc "DROP DATABASE IF EXISTS $TEST_DB_NAME" -c "CREATE DATABASE $TEST_DB_NAME"
  cargo build --quiet --bin sinkgate
  DATABASE_URL="$DB_URL" RUST_LOG=warn target/debug/sinkgate serve --insecure-no-auth --listen "127.0.0.1:$port" &
  TEST_SERVICE_PID=$!
  trap stop_test_service EXIT
  for _ in $(seq 1 100); do
    curl -sf "$SERVICE_URL/readyz" >/dev/null && break
    sleep 0.1
  done
  kill -0 "$TEST_SERVICE_PID" 2>/dev/null || { echo "[test-service.sh] sinkgate did not start on port $port" >&2; exit 1; }
}

stop_test_service() {
  kill "$TEST_SERVICE_PID" 2>/dev/null || true
  wait "$TEST_SERVICE_PID" 2>/dev/null || true
  psql "$BASE_URL" -qc "DROP DATABASE IF EXISTS $TEST_DB_NAME" || true
}
