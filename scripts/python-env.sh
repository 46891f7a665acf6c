#!/usr/bin/env bash
# The Python environment the tests run processors in: a virtualenv under
# target/ with the `sinkgate` package (clients/python, installed editable)
# and its test dependencies from PyPI. Idempotent: reinstalls only when
# clients/python/pyproject.toml changed. Prints the interpreter's path on
# its last line.
set -euo pipefail
cd "$(dirname "$0")/.."
VENV=target/python-venv
STAMP="$VENV/.installed-$(sha256sum clients/python/pyproject.toml | cut -c1-16)"
if [ ! -f "$STAMP" ]; then
  echo "[python-env.sh] installing clients/python into $VENV" >&2
  python3 -m venv "$VENV"
  "$VENV/bin/pip" install --quiet --upgrade pip >&2
  "$VENV/bin/pip" install --quiet -e './clients/python[test]' >&2
  rm -f "$VENV"/.installed-*
  touch "$STAMP"
fi
echo "$PWD/$VENV/bin/python"
