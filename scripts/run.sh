#!/usr/bin/env bash
# Runs sinkgate (release build) against a local PostgreSQL, which
# scripts/postgres.sh installs, starts and prepares when needed. Migrations are
# applied at start-up. Extra arguments go to `sinkgate serve`.
set -euo pipefail
cd "$(dirname "$0")/.."
DATABASE_URL=$(scripts/postgres.sh)
export DATABASE_URL
# Authentication is off for local development (the service logs a warning);
# see the README for tokens.
exec cargo run --release --quiet -- serve --insecure-no-auth "$@"
