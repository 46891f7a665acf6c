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

import sys

import sinkgate
from partitioned_log import arguments, main, owned_partitions, read_log, run_to_end


def run(args):
    # Retries a service that is down or restarting for as long as it takes.
    client = sinkgate.Client(args.url.split(","), args.job, args.token, retry_for=None)
    tasks = [f"task-{t}" for t in range(args.tasks)]
    owned = owned_partitions(tasks, args.partitions)
    logs = read_log(args.log_dir, args.partitions)

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
            for i, event in enumerate(events):
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

    return run_to_end(processor, tasks, stage, checkpoint, done, args)


if __name__ == "__main__":
    parser = arguments(__doc__, "events")
    parser.add_argument("--sink-table", help="register the job on this append sink first")
    sys.exit(main(run, parser.parse_args()))
