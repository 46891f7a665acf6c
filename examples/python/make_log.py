#!/usr/bin/env python3
"""Writes a partitioned event log for the example processors:
`partition-<p>.ndjson`, one event per line, ids unique across partitions."""

import argparse
import json
import os

parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
parser.add_argument("--log-dir", required=True)
parser.add_argument("--partitions", type=int, default=4)
parser.add_argument("--events", type=int, default=1000, help="per partition")
args = parser.parse_args()
os.makedirs(args.log_dir, exist_ok=True)
for p in range(args.partitions):
    with open(os.path.join(args.log_dir, f"partition-{p}.ndjson"), "w") as file:
        for offset in range(args.events):
            event = {"id": p * 1_000_000 + offset, "payload": f"p{p}-o{offset}-" + "x" * (offset % 17)}
            file.write(json.dumps(event) + "\n")
