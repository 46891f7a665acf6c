#!/usr/bin/env bash
# Debian's Chromium and ChromeDriver, for the dashboard's browser test
# (clients/python/tests/test_dashboard.py). Idempotent: installs only when
# either is missing.
set -euo pipefail
if command -v chromium >/dev/null 2>&1 && command -v chromedriver >/dev/null 2>&1; then
  exit 0
fi
echo "[chromium.sh] installing chromium and chromium-driver from Debian's packages" >&2
if [ "$(id -u)" = 0 ]; then SUDO=; else SUDO=sudo; fi
$SUDO env DEBIAN_FRONTEND=noninteractive apt-get update -qq >&2
$SUDO env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium chromium-driver >&2
