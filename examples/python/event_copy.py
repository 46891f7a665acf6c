#!/usr/bin/env python3
"""Event copy through sinkgate: an exactly-once processor on the `sinkgate`
Python package (`pip install ./clients/python`).

Reads a partitioned log (one file per partition, `partition-<p>.ndjson`, one
JSON event per line; the line number is the offset), runs several tasks,
each owning some partitions, and copies every event into an append sink.

The protocol, as `sinkgate.Processor` runs it:
  1. start an attempt -> a new epoch and the offsets to resume from;
  2. stage rows with batch ids that name their content (partition and first
     offset), so that a retried batch is staged once;
  3. take a checkpoint: every task acks it with the offsets it reached (the
     ack seals what the task staged before it); all rows become visible at once;
  4. on `Fenced`, stop: a newer instance took over, or the database failed over.

    python3 event_copy.py --url http://127.0.0.1:8080 --job events \\
        --sink-table events --log-dir ./log --tasks 2 --partitions 4

Exit status: 0 when every event is committed, 3 when fenced.
"""

import argparse
import json
import os
import sys
import time

import sinkgate


def read_log(log_dir, partition):
    with open(os.path.join(log_dir, f"partition-{partition}.ndjson")) as file:
        return [line for line in file.read().splitlines() if line]


def run(args):
    token = args.token or os.environ.get("SINKGATE_TOKEN")
    # Retries a service that is down or restarting for as long as it takes.
    client = sinkgate.Client(args.url.split(","), args.job, token, retry_for=None)
    tasks = [f"task-{t}" for t in range(args.tasks)]
    owned = {task: [p for p in range(args.partitions) if p % args.tasks == t] for t, task in enumerate(tasks)}
    logs = {p: read_log(args.log_dir, p) for p in range(args.partitions)}

    if args.sink_table:
        client.put_job({"tasks": tasks, "sink": {"table": args.sink_table, "mode": "append"}})
    processor = sinkgate.Processor.start(client, tasks)
    offsets = {p: processor.resume_offset(str(p)) for p in range(args.partitions)}
    print(f"epoch {processor.epoch}: resuming from {offsets}", flush=True)

    def stage(task):
        """Stage the next `batch_rows` events of each of the task's partitions."""
        staged = 0
        for p in owned[task]:
            events = logs[p][offsets[p]:offsets[p] + args.batch_rows]
            if not events:
                continue
            rows = []
            for i, line in enumerate(events):
                event = json.loads(line)
                rows.append({"id": event["id"], "partition": p, "offset": offsets[p] + i, "payload": event["payload"]})
            processor.write(task, f"{p}-{offsets[p]}", rows)
            offsets[p] += len(events)
            staged += 1
        return staged

    def barrier(task):
        return {str(p): offsets[p] for p in owned[task]}, None

    def checkpoint():
        # Tasks reach the barrier at different times: a task that has acked
        # goes on staging its next batch before the others ack. Those rows
        # belong to the next checkpoint and must not become visible with this one.
        last = tasks[-1]
        processor.checkpoint(barrier, after_ack=lambda task: stage(task) if task != last else None)

    def done():
        return all(offsets[p] >= len(logs[p]) for p in range(args.partitions))

    batches = 0
    while True:
        for task in tasks:
            batches += stage(task)
        if batches >= args.checkpoint_batches or done():
            checkpoint()
            batches = 0
            if done():
                checkpoint()
        if done():
            print(f"epoch {processor.epoch}: all events committed", flush=True)
            return 0
        if args.pause_ms:
            time.sleep(args.pause_ms / 1000)


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--url", default="http://127.0.0.1:8080", help="one or more base URLs, comma-separated")
    parser.add_argument("--job", default="events")
    parser.add_argument("--log-dir", required=True)
    parser.add_argument("--tasks", type=int, default=2)
    parser.add_argument("--partitions", type=int, default=4)
    parser.add_argument("--batch-rows", type=int, default=50)
    parser.add_argument("--checkpoint-batches", type=int, default=8)
    parser.add_argument("--pause-ms", type=int, default=0)
    parser.add_argument("--sink-table", help="register the job on this append sink first")
    parser.add_argument("--token", help="bearer token (default: $SINKGATE_TOKEN)")
    args = parser.parse_args()
    try:
        return run(args)
    except sinkgate.Fenced as fenced:
        print(f"fenced: a newer attempt, or a database failover, ended this epoch; stopping (start again to resume): {fenced}",
              file=sys.stderr, flush=True)
        return 3


if __name__ == "__main__":
    sys.exit(main())
