"""The README's ten-line processor, copied as a user would: killed at random
points and started again, it leaves every row in the sink exactly once."""

from __future__ import annotations

import os
import random
import re
import subprocess
import sys
import time

import sinkgate
from conftest import REPO

SOURCE_ROWS = 3000


def readme_processor(service: str) -> str:
    text = (REPO / "README.md").read_text()
    section = text[text.index("A processor in ten lines"):]
    code = re.search(r"```python\n(.*?)```", section, re.S).group(1)
    code = code.replace("http://127.0.0.1:8080", service)
    # The user's source: partition 0, a list of payloads.
    return f"source = [f'event-{{i}}' for i in range({SOURCE_ROWS})]\n" + code


def test_the_readme_processor_killed_and_restarted_writes_every_row_once(service, db, tmp_path):
    rng = random.Random(int(os.environ.get("SINKGATE_PYTEST_SEED", "42")))
    db.execute("CREATE TABLE events (id bigint NOT NULL, payload text NOT NULL)")
    # The README's one-time registration.
    sinkgate.Client(service, "events").put_job({"tasks": ["t0"], "sink": {"table": "events", "mode": "append"}})
    script = tmp_path / "processor.py"
    script.write_text(readme_processor(service))
    for _ in range(int(os.environ.get("SINKGATE_PYTEST_KILLS", "6"))):
        running = subprocess.Popen([sys.executable, str(script)])
        time.sleep(rng.uniform(0.1, 1.0))
        running.kill()
        running.wait()
    assert subprocess.run([sys.executable, str(script)], timeout=120).returncode == 0
    rows, distinct, wrong = db.execute(
        "SELECT count(*), count(DISTINCT id), count(*) FILTER (WHERE payload <> 'event-' || id) FROM events"
    ).fetchone()
    assert (rows, distinct, wrong) == (SOURCE_ROWS, SOURCE_ROWS, 0)
