#!/usr/bin/env bash
# Runs the whole test suite against a local PostgreSQL (prepared by
# scripts/postgres.sh: installed, started, role and database created), with
# crash-test processors on the Python package (scripts/python-env.sh), then
# the Python package's own tests.
set -euo pipefail
cd "$(dirname "$0")/.."
DATABASE_URL=$(scripts/postgres.sh)
export DATABASE_URL
# Processors in the crash tests run on the Python package (clients/python).
SINKGATE_PYTHON=$(scripts/python-env.sh)
export SINKGATE_PYTHON
# Benchmarks are not tests: run them with `cargo bench --bench sinkgate`.
cargo test --workspace --lib --bins --tests "$@"
# The Python package's own tests, against the binary just built (the
# dashboard's test drives Debian's Chromium).
if [ $# -eq 0 ]; then
  scripts/chromium.sh
  "$SINKGATE_PYTHON" -m pytest -q clients/python
fi
