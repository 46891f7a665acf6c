#!/usr/bin/env python3
"""Word count through sinkgate, with its counts in sinkgate's state store.

Reads the partitioned log that `make_log.py` writes; each event counts one
occurrence of the word `p<partition>-w<offset % 13>` and one of
`p<partition>-len-<len(payload) % 97>`, so each task's counts grow to a few
hundred words (words of a partition belong to the task that owns it). Counts are upserted into `word_counts (word text PRIMARY
KEY, n bigint NOT NULL)`. Each task's counts are its checkpoint state,
saved with `Client.save_state` (cut into chunks by content: only the chunks
the store lacks are uploaded) and restored from the recovery point on a
restart, so the counts continue exactly.

    python3 word_count.py --url http://127.0.0.1:8080 --job wordcount --log-dir ./log --register

Exit status: 0 when the log is counted, 3 when fenced.
"""

import json
import sys

import sinkgate
from partitioned_log import arguments, main, owned_partitions, read_log, run_to_end


def words_of(partition, offset, event):
    return [f"p{partition}-w{offset % 13}", f"p{partition}-len-{len(event['payload']) % 97}"]


def run(args):
    client = sinkgate.Client(args.url.split(","), args.job, args.token, retry_for=None)
    tasks = [f"task-{t}" for t in range(args.tasks)]
    if args.register:
        client.put_job({"tasks": tasks, "sink": {"table": "word_counts", "mode": "upsert", "key": ["word"]},
                        "checkpointing": {"timeout_ms": 5000}})
    owned = owned_partitions(tasks, args.partitions)
    logs = read_log(args.log_dir, args.partitions)

    processor = sinkgate.Processor.start(client, tasks)
    offsets = {p: processor.resume_offset(str(p)) for p in range(args.partitions)}
    counts = {}
    for task in tasks:
        stored = processor.resume_state(task)  # a sinkgate.StoredState, or None at first
        counts[task] = json.loads(client.restore_state(stored)) if stored else {}
    print(f"epoch {processor.epoch}: resuming from {offsets}", flush=True)

    def stage(task):
        staged = 0
        for p in owned[task]:
            first = offsets[p]
            events = logs[p][first:first + args.batch_rows]
            if not events:
                continue
            touched = {}
            for i, event in enumerate(events):
                for word in words_of(p, first + i, event):
                    counts[task][word] = counts[task].get(word, 0) + 1
                    touched[word] = counts[task][word]
            processor.write(task, f"{p}-{first}", [{"word": w, "n": n} for w, n in sorted(touched.items())])
            offsets[p] += len(events)
            staged += 1
        return staged

    def checkpoint():
        # Each task's counts into the store, one word per line (a changed
        # count changes the chunk around it, not the others), then the ack.
        saved = {}
        for task in tasks:
            text = "".join(f"{json.dumps(word)}: {n},\n" for word, n in sorted(counts[task].items()))
            saved[task] = client.save_state(("{\n" + text + '"": 0\n}\n').encode())
        processor.checkpoint(lambda task: ({str(p): offsets[p] for p in owned[task]},
                                           sinkgate.StateHandle(stored=saved[task].stored)))

    def done():
        return all(offsets[p] >= len(logs[p]) for p in range(args.partitions))

    return run_to_end(processor, tasks, stage, checkpoint, done, args)


if __name__ == "__main__":
    parser = arguments(__doc__, "wordcount")
    parser.add_argument("--register", action="store_true", help="register the job first (the table must exist)")
    sys.exit(main(run, parser.parse_args()))
