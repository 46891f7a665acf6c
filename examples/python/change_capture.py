#!/usr/bin/env python3
"""Change capture through sinkgate: one job, two outputs, with deletes.

Reads the partitioned log that `make_log.py` writes and reads every event as
a change to a key: most events set the key's value, every fifth deletes the
key. Each change goes to two outputs of one job, committed together at each
checkpoint:

  - `changes` (append): every change, once — the history;
  - `current` (upsert by key, with deletes): each key's latest value, a
    key whose last change is a delete absent.

A reader of both tables, in one snapshot, always finds `current` equal to
the fold of `changes`: never a checkpoint's history without its state.

    python3 change_capture.py --url http://127.0.0.1:8080 --job changes \\
        --log-dir ./log --tasks 2 --partitions 4 --register

Exit status: 0 when every change is committed, 3 when fenced.
"""

import sys

import sinkgate
from partitioned_log import arguments, main, owned_partitions, read_log, run_to_end

# Keys per partition: small, so that keys change many times and deletes
# meet earlier upserts within and across checkpoints.
KEYS_PER_PARTITION = 37


def change(partition, offset, event):
    """The change an event stands for: (key, op, value)."""
    key = partition * 1000 + event["id"] % KEYS_PER_PARTITION
    op = "delete" if offset % 5 == 3 else "upsert"
    return key, op, event["payload"]


def register(client, tasks):
    client.put_job(
        {
            "tasks": tasks,
            "outputs": [
                {"name": "changes", "table": "cdc_changes", "mode": "append"},
                {"name": "current", "table": "cdc_current", "mode": "upsert", "key": ["key"]},
            ],
            "checkpointing": {"timeout_ms": 5000},
        }
    )


def run(args):
    client = sinkgate.Client(args.url.split(","), args.job, args.token, retry_for=None)
    tasks = [f"task-{t}" for t in range(args.tasks)]
    if args.register:
        register(client, tasks)
    owned = owned_partitions(tasks, args.partitions)
    logs = read_log(args.log_dir, args.partitions)

    processor = sinkgate.Processor.start(client, tasks)
    offsets = {p: processor.resume_offset(str(p)) for p in range(args.partitions)}
    print(f"epoch {processor.epoch}: resuming from {offsets}", flush=True)

    def stage(task):
        staged = 0
        for p in owned[task]:
            first = offsets[p]
            events = logs[p][first:first + args.batch_rows]
            if not events:
                continue
            history, state = [], []
            for i, event in enumerate(events):
                key, op, value = change(p, first + i, event)
                history.append({"id": event["id"], "partition": p, "offset": first + i, "key": key, "op": op,
                                "value": value})
                state.append(sinkgate.delete_row({"key": key}) if op == "delete"
                             else {"key": key, "value": value, "offset": first + i})
            # Two batches, one per output; both are sealed by the task's next ack.
            processor.write(task, f"{p}-{first}", history, output="changes")
            processor.write(task, f"{p}-{first}", state, output="current")
            offsets[p] += len(events)
            staged += 1
        return staged

    def barrier(task):
        return {str(p): offsets[p] for p in owned[task]}, None

    def done():
        return all(offsets[p] >= len(logs[p]) for p in range(args.partitions))

    def checkpoint():
        last = tasks[-1]
        processor.checkpoint(barrier, after_ack=lambda task: stage(task) if task != last else None)

    return run_to_end(processor, tasks, stage, checkpoint, done, args)


if __name__ == "__main__":
    parser = arguments(__doc__, "changes")
    parser.add_argument("--register", action="store_true", help="register the job first (the tables must exist)")
    sys.exit(main(run, parser.parse_args()))
