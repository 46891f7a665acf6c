#!/usr/bin/env bash
# Checks the operations files in ops/: the Prometheus alert rules are valid
# and behave as their unit tests say (promtool, from Debian's `prometheus`
# package, installed when missing), and every metric the rules and the
# Grafana dashboard query is one the service exports (src/metrics.rs).
set -euo pipefail
cd "$(dirname "$0")/.."
if ! command -v promtool >/dev/null 2>&1; then
  echo "[check-ops.sh] installing promtool (Debian's prometheus package)" >&2
  if [ "$(id -u)" = 0 ]; then SUDO=; else SUDO=sudo; fi
  $SUDO env DEBIAN_FRONTEND=noninteractive apt-get update -qq >&2
  $SUDO env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends prometheus >&2
fi
promtool check rules ops/prometheus/sinkgate-alerts.yml
(cd ops/prometheus && promtool test rules sinkgate-alerts.test.yml)
python3 - <<'PY'
import json, re, sys
exported = set(re.findall(r'"(sinkgate_[a-z_]+)"', open("src/metrics.rs").read()))
histograms = {name for name in exported if name.endswith("_seconds")}
queries = open("ops/prometheus/sinkgate-alerts.yml").read()
dashboard = json.load(open("ops/grafana/sinkgate.json"))
queries += "\n".join(t["expr"] for p in dashboard["panels"] for t in p["targets"])
queries += json.dumps(dashboard["templating"])
unknown = set()
for name in set(re.findall(r"\b(sinkgate_[a-z_]+)", queries)):
    base = re.sub(r"_(bucket|sum|count)$", "", name)
    if name not in exported and not (base in histograms and base != name):
        unknown.add(name)
if unknown:
    sys.exit(f"ops/ queries metrics the service does not export: {sorted(unknown)}")
print(f"ops/: every queried metric is exported ({len(exported)} exported)")
PY
