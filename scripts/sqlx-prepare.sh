#!/usr/bin/env bash
# Regenerates `.sqlx/`, the descriptions of the compile-time-checked queries,
# against a local PostgreSQL with every migration applied; `--check` only
# verifies they are current (CI). Installs sqlx-cli (the version of the sqlx
# crate) into ~/.cargo/bin when missing.
set -euo pipefail
cd "$(dirname "$0")/.."
SQLX_CLI_VERSION=0.8.6
if ! command -v cargo-sqlx >/dev/null 2>&1 || [[ "$(cargo sqlx --version 2>/dev/null)" != *"$SQLX_CLI_VERSION"* ]]; then
    echo "[sqlx-prepare.sh] installing sqlx-cli $SQLX_CLI_VERSION (once)" >&2
    cargo install sqlx-cli --version "$SQLX_CLI_VERSION" --no-default-features --features postgres,rustls --locked
fi
DATABASE_URL=$(scripts/postgres.sh)
export DATABASE_URL
# A throwaway database at the current migrations, so the dev database is
# left as it is.
CHECK_DB=sinkgate_sqlx_prepare
export SQLX_OFFLINE=false
cargo sqlx database drop -y --database-url "${DATABASE_URL%/*}/$CHECK_DB" >/dev/null 2>&1 || true
cargo sqlx database create --database-url "${DATABASE_URL%/*}/$CHECK_DB"
cargo sqlx migrate run --source migrations --database-url "${DATABASE_URL%/*}/$CHECK_DB"
DATABASE_URL="${DATABASE_URL%/*}/$CHECK_DB" cargo sqlx prepare --workspace "$@" -- --all-targets
cargo sqlx database drop -y --database-url "${DATABASE_URL%/*}/$CHECK_DB" >/dev/null
