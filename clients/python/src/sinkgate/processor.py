"""A processor's side of the protocol, for one instance running all of a
job's tasks (as a restarted stream job restarts all its tasks).

    processor = Processor.start(client, ["task-0", "task-1"])
    offset = processor.resume_offset("0")          # where to read from
    ...
    processor.write("task-0", f"0-{offset}", rows)  # staged, not yet visible
    ...
    processor.checkpoint(lambda task: ({"0": offset}, None))  # all visible at once

What makes it exactly once: ``start`` fences every older instance and says
where the last committed checkpoint left the source; batch ids are
deterministic (``task-batchkey``), so a retried write is staged once; a
checkpoint makes every task's rows visible in one transaction, with the
offsets that produced them. After a crash, the next ``start`` throws away
what the dead instance staged past that point and the source is read again
from there. ``Fenced`` means this instance must stop: a newer one took over,
or the database failed over; its supervisor starts a new instance.
"""

from __future__ import annotations

import time
from typing import Any, Callable, Dict, Mapping, Optional, Sequence, Set, Tuple

from . import errors
from .client import Client
from .models import Attempt, ExternalState, StateHandle, WriteResult

Barrier = Tuple[Mapping[str, int], Optional[Any]]

#: Most acks the service takes in one batch request.
MAX_BATCH_ACKS = 1024
"""What a task hands over at a barrier: its source offsets (partition → the
next offset to read), and its state (``StateHandle``, a JSON-able value kept
inline, or None)."""


class Processor:
    """One running instance of a job, in one epoch."""

    def __init__(self, client: Client, tasks: Sequence[str], attempt: Attempt):
        self.client = client
        self.tasks = list(tasks)
        self.attempt = attempt
        # Tasks whose ack of a checkpoint is recorded (checkpoint id → tasks).
        self._acked: Dict[int, Set[str]] = {}

    @classmethod
    def start(cls, client: Client, tasks: Sequence[str]) -> "Processor":
        """Starts an attempt: fences any older instance, learns where to resume."""
        return cls(client, tasks, client.start_attempt())

    @property
    def epoch(self) -> int:
        return self.attempt.epoch

    def resume_offset(self, partition: str) -> int:
        """The next offset to read from ``partition`` (0 when nothing was committed)."""
        return int(self.attempt.recovery.offsets.get(str(partition), 0))

    def resume_state(self, task: str) -> Optional[Any]:
        """The state ``task`` acked at the recovery point: the ``StoredState``
        it saved in the state store (``Client.restore_state`` gets it back),
        the ``ExternalState`` it referred to, or its inline value; None if none."""
        recovered = self.attempt.recovery.tasks.get(task)
        if recovered is None or recovered.state is None:
            return None
        return recovered.state.stored or recovered.state.external or recovered.state.inline

    def write(
        self, task: str, batch_key: str, rows: Sequence[Mapping[str, Any]], output: Optional[str] = None
    ) -> WriteResult:
        """Stages a batch. ``batch_key`` must name the batch's content within
        the epoch (e.g. the partition and first offset it covers): a retry with
        the same key is staged once. ``output``: the output the rows go to, for
        a job with several (the key then needs to be unique per output only)."""
        if output is None:
            return self.client.write(task, self.epoch, f"{task}-{batch_key}", rows)
        # Output names have no ':', so no two (output, key) pairs share an id.
        return self.client.write(task, self.epoch, f"{task}:{output}:{batch_key}", rows, output=output)

    def next_barrier(self, after: int = 0, wait_ms: int = 30_000) -> Optional[int]:
        """Waits (long-poll) for a checkpoint the service triggered (a job with
        an interval); its id, or None if none came within ``wait_ms``."""
        pending = self.client.pending(after=after, wait_ms=wait_ms)
        return None if pending is None else pending.checkpoint_id

    def checkpoint(
        self,
        barrier: Callable[[str], Barrier],
        after_ack: Optional[Callable[[str], None]] = None,
        checkpoint_id: Optional[int] = None,
        promotion_patience: float = 60.0,
    ) -> int:
        """Takes a checkpoint and waits until it is committed; its id.

        Triggers one (or takes ``checkpoint_id``, from ``next_barrier``), acks
        it from every task with what ``barrier(task)`` returns (the
        process's tasks in one request, up to 1024 a request; every barrier
        of a request is asked before it is sent), then calls
        ``after_ack(task)`` for each task (a task may go on staging its next
        rows there: they belong to the next checkpoint). A checkpoint
        aborted on the way (a timeout) is retried with a new one, after a
        pause; nothing staged is lost. Safe to call again after it raised
        half-way: a task that already acked this checkpoint is not asked
        again (its ack stands).

        Raises ``PromotionBlocked`` when the checkpoint is decided but its
        rows cannot enter the sink for ``promotion_patience`` seconds (a lock
        or an outage is retried by the service meanwhile): an operator must
        fix the sink (see ``sink_error``)."""
        pause = 0.05
        while True:
            if checkpoint_id is None:
                checkpoint_id = self._trigger()
                if checkpoint_id is None:
                    time.sleep(pause)
                    pause = min(pause * 2, 1.0)
                    continue
            try:
                status = "pending"
                acked = self._acked.setdefault(checkpoint_id, set())
                waiting = [task for task in self.tasks if task not in acked]
                # The process's tasks in as few requests as the service
                # takes (each all or none), each recorded as acked at once.
                for start in range(0, len(waiting), MAX_BATCH_ACKS):
                    group = waiting[start : start + MAX_BATCH_ACKS]
                    barriers = {task: _handle(barrier(task)) for task in group}
                    if len(barriers) == 1:
                        task, (offsets, state) = next(iter(barriers.items()))
                        status = self.client.ack(checkpoint_id, task, self.epoch, offsets, state).status
                    else:
                        status = self.client.ack_batch(checkpoint_id, self.epoch, barriers).status
                    acked.update(group)
                if after_ack is not None:
                    for task in waiting:
                        after_ack(task)
                status = self._wait_for_commit(checkpoint_id, status, promotion_patience)
                if status == "committed":
                    self._acked.pop(checkpoint_id, None)
                    return checkpoint_id
            except errors.CheckpointAborted:
                pass
            self._acked.pop(checkpoint_id, None)
            checkpoint_id = None
            # Aborted (a timeout, a decline, an operator): the next one
            # carries what was staged; not at once, so a job whose
            # checkpoints cannot complete does not spin.
            time.sleep(pause)
            pause = min(pause * 2, 1.0)

    def _wait_for_commit(self, checkpoint_id: int, status: str, patience: float) -> str:
        blocked_since: Optional[float] = None
        delay = 0.02
        while status in ("pending", "completed"):
            time.sleep(delay)
            delay = min(delay * 2, 0.5)
            try:
                details = self.client.checkpoint(checkpoint_id).checkpoint
            except errors.NotFound as gone:
                # Acked, then gone: the database failed over to a standby
                # that never received it (or the job was deleted). This
                # epoch is over.
                raise errors.Fenced(409, {
                    "type": errors.PROBLEM_TYPE_PREFIX + "fenced",
                    "title": "Fenced epoch",
                    "detail": f"checkpoint {checkpoint_id} no longer exists (lost in a failover, or the job was deleted): start again",
                    "request_id": gone.request_id,
                }) from gone
            status = details.status
            if status == "completed" and details.promotion_error:
                blocked_since = blocked_since or time.monotonic()
                if time.monotonic() - blocked_since >= patience:
                    raise errors.PromotionBlocked(409, {
                        "type": errors.PROBLEM_TYPE_PREFIX + "promotion-blocked",
                        "title": "Promotion blocked",
                        "detail": f"checkpoint {checkpoint_id} is decided but its rows cannot enter the sink: {details.promotion_error}",
                        "checkpoint_id": checkpoint_id,
                        "sink_error": details.promotion_error,
                    })
            else:
                blocked_since = None
        return status

    def _trigger(self) -> Optional[int]:
        try:
            return self.client.trigger(self.epoch).checkpoint_id
        except errors.Conflict:
            # One is pending already (this trigger's answer was lost, or the
            # scheduler triggered one): take it.
            pending = self.client.pending(after=0, wait_ms=0)
            return None if pending is None else pending.checkpoint_id


def offsets_of(values: Dict[Any, int]) -> Dict[str, int]:
    """Offsets with partition names as the API takes them (strings)."""
    return {str(partition): int(offset) for partition, offset in values.items()}


def _handle(barrier: Barrier) -> Tuple[Mapping[str, int], Optional[StateHandle]]:
    """A task's barrier as an ack carries it: offsets, and the state as a
    handle (inline JSON, or an external reference)."""
    offsets, state = barrier
    if isinstance(state, ExternalState):
        return offsets, StateHandle(external=state)
    if state is not None and not isinstance(state, StateHandle):
        return offsets, StateHandle(inline=state)
    return offsets, state
