"""What the example processors share: the partitioned log they read (one
file per partition, `partition-<p>.ndjson`, one JSON event per line; the
line number is the offset), their command line, and the loop that stages
batches, takes checkpoints and stops at the end of the log."""

import argparse
import json
import os
import sys
import time

import sinkgate


def arguments(doc, job):
    """The command line every example takes (`job`: the default job id)."""
    parser = argparse.ArgumentParser(description=doc.splitlines()[0])
    parser.add_argument("--url", default="http://127.0.0.1:8080", help="one or more base URLs, comma-separated")
    parser.add_argument("--job", default=job)
    parser.add_argument("--log-dir", required=True)
    parser.add_argument("--tasks", type=int, default=2)
    parser.add_argument("--partitions", type=int, default=4)
    parser.add_argument("--batch-rows", type=int, default=50)
    parser.add_argument("--checkpoint-batches", type=int, default=8)
    parser.add_argument("--pause-ms", type=int, default=0)
    parser.add_argument("--token", default=os.environ.get("SINKGATE_TOKEN"), help="bearer token")
    return parser


def read_log(log_dir, partitions):
    """Partition → its events, in offset order."""
    logs = {}
    for p in range(partitions):
        with open(os.path.join(log_dir, f"partition-{p}.ndjson")) as file:
            logs[p] = [json.loads(line) for line in file.read().splitlines() if line]
    return logs


def owned_partitions(tasks, partitions):
    """Task → the partitions it reads (round robin)."""
    return {task: [p for p in range(partitions) if p % len(tasks) == t] for t, task in enumerate(tasks)}


def run_to_end(processor, tasks, stage, checkpoint, done, args):
    """Stages a batch per task in turn (`stage(task)` answers how many it
    staged), takes a checkpoint every `--checkpoint-batches` batches and at
    the end (twice there: rows a task staged after acking the first belong
    to the second), and answers 0 once the log is done."""
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
            print(f"epoch {processor.epoch}: the whole log is committed", flush=True)
            return 0
        if args.pause_ms:
            time.sleep(args.pause_ms / 1000)


def main(run, args):
    """Runs `run(args)`; exit status 3 when fenced (a newer instance runs)."""
    try:
        return run(args)
    except sinkgate.Fenced as fenced:
        print(f"fenced: a newer attempt, or a database failover, ended this epoch; stopping (start again to resume): {fenced}",
              file=sys.stderr, flush=True)
        return 3
