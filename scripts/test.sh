#!/usr/bin/env bash
# Runs the whole test suite against a local PostgreSQL (prepared by
# scripts/postgres.sh: installed, started, role and database created).
set -euo pipefail
cd "$(dirname "$0")/.."
DATABASE_URL=$(scripts/postgres.sh)
export DATABASE_URL
# Benchmarks are not tests: run them with `cargo bench --bench sinkgate`.
cargo test --workspace --lib --bins --tests "$@"
