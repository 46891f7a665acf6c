#!/usr/bin/env python3
"""Event copy through sinkgate: an exactly-once processor in plain Python.

Reads a partitioned log (one file per partition, `partition-<p>.ndjson`, one
JSON event per line; the line number is the offset), runs several tasks,
each owning some partitions, and copies every event into an append sink
through sinkgate. Uses only the standard library.

The protocol, as any processor follows it:
  1. POST /attempts -> a new epoch and the offsets to resume from;
  2. stage rows with POST /writes, with batch ids that are deterministic
     within the epoch (a retried batch is staged once);
  3. trigger a checkpoint, and ack it from every task with the offsets
     reached (the ack seals what the task staged before it);
  4. on 409 `fenced`, stop: a newer instance of the job took over.

    python3 event_copy.py --url http://127.0.0.1:8080 --job events \\
        --sink-table events --log-dir ./log --tasks 2 --partitions 4

Exit status: 0 when every event is committed, 3 when fenced (a zombie).
"""

import argparse
import json
import os
import random
import sys
import time
import urllib.error
import urllib.request


class Fenced(Exception):
    """This instance's epoch is over: another instance took over the job."""


class Refused(Exception):
    """A 4xx answer other than `fenced` (a bug in this processor, or a checkpoint
    that can no longer be acked)."""

    def __init__(self, status, problem):
        super().__init__(f"{status}: {problem}")
        self.status = status
        self.problem = problem


class Sinkgate:
    """A tiny client: JSON over HTTP, retrying transient failures forever."""

    def __init__(self, urls, job, token=None):
        self.urls = urls
        self.job = job
        self.token = token

    def call(self, method, path, body=None, content_type="application/json", query=""):
        data = None
        if body is not None:
            data = body if isinstance(body, bytes) else json.dumps(body).encode()
        delay = 0.05
        while True:
            url = random.choice(self.urls) + f"/v1/jobs/{self.job}{path}{query}"
            request = urllib.request.Request(url, data=data, method=method)
            if data is not None:
                request.add_header("Content-Type", content_type)
            if self.token:
                request.add_header("Authorization", f"Bearer {self.token}")
            try:
                with urllib.request.urlopen(request, timeout=30) as response:
                    text = response.read()
                    return response.status, (json.loads(text) if text else None)
            except urllib.error.HTTPError as error:
                text = error.read()
                problem = json.loads(text) if text else {}
                kind = str(problem.get("type", ""))
                if kind.endswith(":fenced"):
                    raise Fenced(problem.get("detail"))
                if error.code >= 500 or error.code == 429:
                    pass  # transient: retry the same request
                else:
                    raise Refused(error.code, problem)
            except (urllib.error.URLError, ConnectionError, TimeoutError, OSError):
                pass  # service down or restarting: retry the same request
            time.sleep(delay)
            delay = min(delay * 2, 1.0)


def read_log(log_dir, partition):
    with open(os.path.join(log_dir, f"partition-{partition}.ndjson")) as file:
        return [line for line in file.read().splitlines() if line]


def run(args):
    client = Sinkgate(args.url.split(","), args.job, args.token or os.environ.get("SINKGATE_TOKEN"))
    tasks = [f"task-{t}" for t in range(args.tasks)]
    owned = {task: [p for p in range(args.partitions) if p % args.tasks == t] for t, task in enumerate(tasks)}
    logs = {p: read_log(args.log_dir, p) for p in range(args.partitions)}

    if args.sink_table:
        spec = {"tasks": tasks, "sink": {"table": args.sink_table, "mode": "append"}}
        client.call("PUT", "", spec)
    _, attempt = client.call("POST", "/attempts", {})
    epoch = attempt["epoch"]
    offsets = {p: int(attempt["recovery"]["offsets"].get(str(p), 0)) for p in range(args.partitions)}
    print(f"epoch {epoch}: resuming from {offsets}", flush=True)

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
            # Deterministic within the epoch: a retry is staged once.
            body = {"task_id": task, "epoch": epoch, "batch_id": f"{task}-{p}-{offsets[p]}", "rows": rows}
            client.call("POST", "/writes", body)
            offsets[p] += len(events)
            staged += 1
        return staged

    batches = 0
    while True:
        for task in tasks:
            batches += stage(task)
        done = all(offsets[p] >= len(logs[p]) for p in range(args.partitions))
        if batches >= args.checkpoint_batches or done:
            checkpoint(client, tasks, owned, offsets, epoch, stage)
            batches = 0
            done = all(offsets[p] >= len(logs[p]) for p in range(args.partitions))
            if done:
                checkpoint(client, tasks, owned, offsets, epoch, stage)
        if done:
            print(f"epoch {epoch}: all events committed", flush=True)
            return 0
        if args.pause_ms:
            time.sleep(args.pause_ms / 1000)


def checkpoint(client, tasks, owned, offsets, epoch, stage):
    """Trigger a checkpoint and ack it from every task; retry until committed.

    Tasks reach the barrier at different times: a task that has acked goes on
    staging its next batch before the others ack. Those rows belong to the
    next checkpoint, and must not become visible with this one."""
    while True:
        try:
            _, triggered = client.call("POST", "/checkpoints", {"epoch": epoch})
        except Refused as refused:
            if refused.status != 409:
                raise
            # One is already pending (triggered before a crash): take it.
            status, pending = client.call("GET", "/checkpoints/pending", query="?wait_ms=0")
            if status != 200:
                continue
            triggered = pending
        checkpoint_id = triggered["checkpoint_id"]
        try:
            status = None
            for index, task in enumerate(tasks):
                ack = {"task_id": task, "epoch": epoch, "offsets": {str(p): offsets[p] for p in owned[task]}}
                _, answer = client.call("POST", f"/checkpoints/{checkpoint_id}/acks", ack)
                status = answer["status"]
                if index + 1 < len(tasks):
                    stage(task)  # past its barrier, while the others are not
            while status == "pending" or status == "completed":
                time.sleep(0.05)
                _, details = client.call("GET", f"/checkpoints/{checkpoint_id}")
                status = details["status"]
            if status == "committed":
                return
        except Refused as refused:
            kind = str(refused.problem.get("type", ""))
            if not kind.endswith(":checkpoint-aborted"):
                raise
        # Aborted (timeout): nothing is lost, the next checkpoint carries it.


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
    except Fenced as fenced:
        print(f"fenced: a newer attempt, or a database failover, ended this epoch; stopping (start again to resume): {fenced}", file=sys.stderr, flush=True)
        return 3


if __name__ == "__main__":
    sys.exit(main())
