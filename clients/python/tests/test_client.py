"""The client against the real service: answers as dataclasses, problem
documents as the exceptions a processor acts on."""

from __future__ import annotations

import time

import pytest

import sinkgate
from sinkgate import errors


@pytest.fixture
def job(service, db):
    db.execute("CREATE TABLE scores (id bigint PRIMARY KEY, player text NOT NULL, points int NOT NULL)")
    client = sinkgate.Client(service, "scores")
    client.put_job({"tasks": ["t0"], "sink": {"table": "scores", "mode": "upsert", "key": ["id"]}})
    return client


def test_a_checkpoint_makes_staged_rows_visible_at_once(job, db):
    processor = sinkgate.Processor.start(job, ["t0"])
    assert processor.resume_offset("0") == 0
    staged = processor.write("t0", "0-0", [{"id": 1, "player": "ada", "points": 3}])
    assert staged.staged_rows == 1 and not staged.duplicate
    # A retry of the same batch is staged once.
    assert processor.write("t0", "0-0", [{"id": 1, "player": "ada", "points": 3}]).duplicate
    assert db.execute("SELECT count(*) FROM scores").fetchone()[0] == 0
    checkpoint_id = processor.checkpoint(lambda task: ({"0": 1}, {"sum": 3}))
    assert db.execute("SELECT player, points FROM scores").fetchall() == [("ada", 3)]
    details = job.checkpoint(checkpoint_id)
    assert details.checkpoint.status == "committed"
    assert [ack.task_id for ack in details.acks] == ["t0"]
    # The next instance resumes where the checkpoint left off, with its state.
    successor = sinkgate.Processor.start(job, ["t0"])
    assert successor.resume_offset("0") == 1
    assert successor.resume_state("t0") == {"sum": 3}


def test_problems_are_typed_exceptions(job):
    processor = sinkgate.Processor.start(job, ["t0"])
    with pytest.raises(errors.RowRejected) as rejected:
        processor.write("t0", "bad", [{"id": 1, "player": "ada", "points": 1}, {"id": 2, "player": "bob", "points": "many"}])
    assert (rejected.value.row, rejected.value.column) == (2, "points")
    with pytest.raises(errors.RowRejected) as missing:
        processor.write("t0", "nokey", [{"player": "eve", "points": 1}])
    assert (missing.value.row, missing.value.column) == (1, "id")
    # A newer instance fences this one: its next request is refused.
    successor = sinkgate.Processor.start(job, ["t0"])
    with pytest.raises(sinkgate.Fenced) as fenced:
        processor.write("t0", "late", [{"id": 3, "player": "zed", "points": 1}])
    assert fenced.value.current_epoch == successor.epoch
    with pytest.raises(errors.NotFound):
        sinkgate.Client(job.base_urls, "no-such-job").get_job()


def test_a_service_that_is_down_is_retried_until_the_deadline():
    client = sinkgate.Client("http://127.0.0.1:9", "any", retry_for=0.3)
    with pytest.raises(errors.Unreachable):
        client.get_job()


def test_a_promotion_the_sink_refuses_is_raised_not_waited_on_for_ever(service, db):
    db.execute("CREATE TABLE ledger (id bigint PRIMARY KEY, amount int NOT NULL CHECK (amount >= 0))")
    client = sinkgate.Client(service, "ledger")
    client.put_job({"tasks": ["t0"], "sink": {"table": "ledger", "mode": "upsert", "key": ["id"]}})
    processor = sinkgate.Processor.start(client, ["t0"])
    # The value fits the column's type (staged), the sink's CHECK refuses it.
    processor.write("t0", "0-0", [{"id": 1, "amount": -5}])
    with pytest.raises(errors.PromotionBlocked) as blocked:
        processor.checkpoint(lambda task: ({"0": 1}, None), promotion_patience=0.5)
    assert "ledger_amount_check" in (blocked.value.sink_error or "")
    assert db.execute("SELECT count(*) FROM ledger").fetchone()[0] == 0


def test_outputs_commit_together_and_deletes_remove_keys(service, db):
    db.execute("CREATE TABLE orders (id bigint NOT NULL, customer bigint NOT NULL, total int NOT NULL)")
    db.execute("CREATE TABLE customers (customer bigint PRIMARY KEY, name text, email text)")
    db.execute("INSERT INTO customers VALUES (2, 'bo', 'bo@old'), (3, 'cy', 'cy@old')")
    client = sinkgate.Client(service, "shop")
    spec = sinkgate.JobSpec(
        tasks=["t0"],
        outputs=[
            sinkgate.OutputSpec(name="orders", table="orders", mode="append"),
            sinkgate.OutputSpec(name="customers", table="customers", mode="upsert", key=["customer"],
                                partial_updates=True),
        ],
    )
    job = client.put_job(spec)
    assert job.sink is None and [output.name for output in job.outputs] == ["orders", "customers"]
    processor = sinkgate.Processor.start(client, ["t0"])
    processor.write("t0", "0-0", [{"id": 1, "customer": 2, "total": 30}], output="orders")
    # The same key for the other output is another batch.
    processor.write("t0", "0-0", [{"customer": 2, "email": "bo@new"}, sinkgate.delete_row({"customer": 3})],
                    output="customers")
    with pytest.raises(errors.Validation):
        processor.write("t0", "0-1", [{"id": 2, "customer": 2, "total": 1}])
    checkpoint_id = processor.checkpoint(lambda task: ({"0": 1}, None))
    assert db.execute("SELECT id, customer, total FROM orders").fetchall() == [(1, 2, 30)]
    assert db.execute("SELECT customer, name, email FROM customers").fetchall() == [(2, "bo", "bo@new")]
    assert client.checkpoint(checkpoint_id).checkpoint.promoted_outputs == {"orders": 1, "customers": 2}


def test_state_is_saved_incrementally_restored_and_refused_when_corrupted(job, db):
    state = "".join(f'"word-{i:07d}": {i % 1000},\n' for i in range(400_000)).encode()
    first = job.save_state(state)
    assert first.uploaded_chunks == len(first.stored.chunks) >= 4
    assert job.save_state(state).uploaded_chunks == 0  # unchanged: nothing uploaded
    changed = state.replace(b'"word-0200999": 999,', b'"word-0200999": 1000,')
    again = job.save_state(changed)
    assert again.uploaded_chunks == 1  # one key changed: one chunk
    assert job.restore_state(again.stored) == changed
    db.execute("UPDATE state_chunks SET content = 'x' WHERE sha256 = decode(%s, 'hex')", (again.stored.chunks[0],))
    with pytest.raises(sinkgate.StateCorrupted):
        job.restore_state(again.stored)


def test_a_batch_ack_records_every_task_or_none_and_can_promote_in_background(service, db):
    db.execute("CREATE TABLE hits (id bigint PRIMARY KEY, task text NOT NULL)")
    client = sinkgate.Client(service, "hits")
    tasks = ["t0", "t1", "t2"]
    client.put_job({"tasks": tasks, "sink": {"table": "hits", "mode": "append"}})
    epoch = client.start_attempt().epoch
    for index, task in enumerate(tasks):
        client.write(task, epoch, "b0", [{"id": index, "task": task}])
    checkpoint = client.trigger(epoch).checkpoint_id
    # One refused ack (an unknown task) refuses the batch, and says which.
    with pytest.raises(errors.UnknownTask) as unknown:
        client.ack_batch(checkpoint, epoch, {"t0": ({"0": 1}, None), "t9": ({"9": 1}, None)})
    assert unknown.value.field == "acks[1].task_id"
    assert client.checkpoint(checkpoint).checkpoint.acked_tasks == 0
    answer = client.ack_batch(
        checkpoint, epoch, {task: ({str(index): 1}, None) for index, task in enumerate(tasks)}, background=True
    )
    # Recorded, every task in; the promotion follows.
    assert (answer.status, answer.acked_tasks, answer.total_tasks) == ("pending", 3, 3)
    deadline = time.monotonic() + 10
    while client.checkpoint(checkpoint).checkpoint.status != "committed":
        assert time.monotonic() < deadline
        time.sleep(0.02)
    assert db.execute("SELECT count(*) FROM hits").fetchone()[0] == 3


def test_a_process_of_more_tasks_than_one_batch_takes_checkpoints(service, db):
    db.execute("CREATE TABLE many (id bigint PRIMARY KEY)")
    client = sinkgate.Client(service, "many")
    tasks = [f"t{index}" for index in range(1100)]
    client.put_job({"tasks": tasks, "sink": {"table": "many", "mode": "append"}})
    processor = sinkgate.Processor.start(client, tasks)
    processor.write("t7", "b0", [{"id": 7}])
    seen = []
    checkpoint = processor.checkpoint(lambda task: ({task: 1}, None), after_ack=seen.append)
    assert client.checkpoint(checkpoint).checkpoint.acked_tasks == 1100
    assert sorted(seen) == sorted(tasks)
    assert db.execute("SELECT count(*) FROM many").fetchone()[0] == 1
