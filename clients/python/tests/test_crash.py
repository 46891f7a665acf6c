"""The README's promise, tested: kill the example processor
(`examples/python/event_copy.py`) anywhere, start it again, and every event
is in the sink exactly once, with the committed offsets at the log's ends.

`SINKGATE_PYTEST_KILLS` sets how many kills (default 6); the seed is
`SINKGATE_PYTEST_SEED` (default 42), printed on failure."""

from __future__ import annotations

import json
import os
import random
import subprocess
import sys
import time

import sinkgate

from conftest import REPO

EXAMPLES = REPO / "examples" / "python"
PARTITIONS = 4
EVENTS = 500


def processor(url: str, log_dir: str, pause_ms: int) -> subprocess.Popen:
    return subprocess.Popen(
        [sys.executable, str(EXAMPLES / "event_copy.py"), "--url", url, "--job", "copy",
         "--log-dir", log_dir, "--tasks", "2", "--partitions", str(PARTITIONS),
         "--batch-rows", "40", "--checkpoint-batches", "6", "--pause-ms", str(pause_ms)],
        stdout=subprocess.DEVNULL,
    )


def test_a_processor_killed_at_random_points_copies_every_event_once(service, db, tmp_path):
    seed = int(os.environ.get("SINKGATE_PYTEST_SEED", "42"))
    kills = int(os.environ.get("SINKGATE_PYTEST_KILLS", "6"))
    rng = random.Random(seed)
    subprocess.run(
        [sys.executable, str(EXAMPLES / "make_log.py"), "--log-dir", str(tmp_path),
         "--partitions", str(PARTITIONS), "--events", str(EVENTS)],
        check=True,
    )
    # No unique key: a duplicate would show.
    db.execute('CREATE TABLE copy_sink (id bigint NOT NULL, "partition" int NOT NULL, "offset" bigint NOT NULL, payload text NOT NULL)')
    client = sinkgate.Client(service, "copy")
    client.put_job({"tasks": ["task-0", "task-1"], "sink": {"table": "copy_sink", "mode": "append"},
                    "checkpointing": {"timeout_ms": 5000}})

    mid_run = 0
    for _ in range(kills):
        running = processor(service, str(tmp_path), 40)
        time.sleep(rng.uniform(0.05, 0.9))
        if running.poll() is None:
            mid_run += 1
        running.kill()  # SIGKILL, wherever it was
        running.wait()
    final = processor(service, str(tmp_path), 0)
    assert final.wait(timeout=120) == 0, f"seed {seed}"

    rows, distinct, misplaced = db.execute(
        'SELECT count(*), count(DISTINCT id), count(*) FILTER (WHERE id <> "partition" * 1000000 + "offset") FROM copy_sink'
    ).fetchone()
    total = PARTITIONS * EVENTS
    assert distinct == total, f"seed {seed}: missing events"
    assert rows == total, f"seed {seed}: {rows - total} duplicated rows"
    assert misplaced == 0
    recovery = client.recovery()
    assert recovery.offsets == {str(p): EVENTS for p in range(PARTITIONS)}
    print(f"{kills} kills ({mid_run} of a running processor): {rows} rows for {total} events, 0 duplicated, 0 missing")


def test_a_word_count_keeps_its_counts_in_the_state_store_through_kills(service, db, tmp_path):
    """`examples/python/word_count.py`: counts in the state store, the
    processor killed at random points, the counts exact at the end."""
    seed = int(os.environ.get("SINKGATE_PYTEST_SEED", "42"))
    kills = int(os.environ.get("SINKGATE_PYTEST_KILLS", "6"))
    rng = random.Random(seed + 1)
    subprocess.run(
        [sys.executable, str(EXAMPLES / "make_log.py"), "--log-dir", str(tmp_path),
         "--partitions", str(PARTITIONS), "--events", str(EVENTS)],
        check=True,
    )
    db.execute("CREATE TABLE word_counts (word text PRIMARY KEY, n bigint NOT NULL)")

    def counter(pause_ms: int) -> subprocess.Popen:
        return subprocess.Popen(
            [sys.executable, str(EXAMPLES / "word_count.py"), "--url", service, "--job", "wc",
             "--log-dir", str(tmp_path), "--partitions", str(PARTITIONS), "--batch-rows", "40",
             "--checkpoint-batches", "4", "--pause-ms", str(pause_ms)],
            stdout=subprocess.DEVNULL,
        )

    client = sinkgate.Client(service, "wc")
    client.put_job({"tasks": ["task-0", "task-1"], "sink": {"table": "word_counts", "mode": "upsert", "key": ["word"]},
                    "checkpointing": {"timeout_ms": 5000}})
    for _ in range(kills):
        running = counter(40)
        time.sleep(rng.uniform(0.1, 1.0))
        running.kill()
        running.wait()
    assert counter(0).wait(timeout=120) == 0, f"seed {seed}"

    truth: dict = {}
    for p in range(PARTITIONS):
        with open(tmp_path / f"partition-{p}.ndjson") as file:
            for offset, line in enumerate(line for line in file.read().splitlines() if line):
                event = json.loads(line)
                for word in (f"p{p}-w{offset % 13}", f"p{p}-len-{len(event['payload']) % 97}"):
                    truth[word] = truth.get(word, 0) + 1
    counted = dict(db.execute("SELECT word, n FROM word_counts").fetchall())
    assert counted == truth, f"seed {seed}"
    chunks = db.execute("SELECT count(*) FROM state_chunks WHERE job_id = 'wc'").fetchone()[0]
    assert chunks > 0, "the counts went through the state store"
    print(f"{kills} kills: {len(truth)} words exact, {chunks} state chunks stored")
