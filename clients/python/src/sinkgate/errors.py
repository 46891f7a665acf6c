"""Problem documents (RFC 9457) as exceptions.

Every error answer of sinkgate is a problem document whose ``type`` is
``urn:sinkgate:problem:<kind>``; each kind is a class here, so a processor
catches what it can act on (``Fenced``: stop; ``CheckpointAborted``: take the
next checkpoint; ``RowRejected``: fix the row named by ``row`` and
``column``) and lets the rest propagate.
"""

from __future__ import annotations

from typing import Any, Dict, Optional, Type

PROBLEM_TYPE_PREFIX = "urn:sinkgate:problem:"


class SinkgateError(Exception):
    """An answer sinkgate gave instead of what was asked, or no answer at all."""

    kind: str = "internal"

    def __init__(self, status: int, problem: Dict[str, Any]):
        self.status = status
        self.problem = problem
        self.detail: str = str(problem.get("detail", ""))
        self.title: str = str(problem.get("title", ""))
        self.request_id: Optional[str] = problem.get("request_id")
        super().__init__(f"{status} {self.title}: {self.detail}" if self.title else f"{status}: {self.detail}")


class Transient(SinkgateError):
    """Worth a retry (the client already retried until its deadline):
    overloaded, a timeout, the database unavailable, too early, or no answer."""


class Overloaded(Transient):
    kind = "overloaded"


class Timeout(Transient):
    """No answer in time; the request may still take effect (writes and acks
    are safe to repeat)."""

    kind = "timeout"


class Unavailable(Transient):
    kind = "unavailable"


class TooEarly(Transient):
    kind = "too-early"


class Unreachable(Transient):
    """No HTTP answer at all (connection refused or cut)."""

    kind = "unreachable"


class Fenced(SinkgateError):
    """This instance's epoch is over: a newer attempt started (this instance
    is a zombie), or the database failed over since the epoch began. Stop;
    a new instance starts a new attempt and resumes from the recovery point."""

    kind = "fenced"

    @property
    def current_epoch(self) -> Optional[int]:
        return self.problem.get("current_epoch")


class CheckpointAborted(SinkgateError):
    """The checkpoint was aborted (timeout, decline, operator). Nothing staged
    is lost: the next checkpoint carries it."""

    kind = "checkpoint-aborted"

    @property
    def checkpoint_id(self) -> Optional[int]:
        return self.problem.get("checkpoint_id")


class RowRejected(SinkgateError):
    """A row of the batch does not fit the sink; nothing of the batch was staged."""

    kind = "row-rejected"

    @property
    def row(self) -> Optional[int]:
        """1-based row number within the batch."""
        return self.problem.get("row")

    @property
    def column(self) -> Optional[str]:
        return self.problem.get("column")


class OffsetRegression(SinkgateError):
    kind = "offset-regression"

    @property
    def partition(self) -> Optional[str]:
        return self.problem.get("partition")

    @property
    def committed_offset(self) -> Optional[int]:
        return self.problem.get("committed_offset")


class PromotionBlocked(SinkgateError):
    """A decided checkpoint cannot be promoted into the sink (see ``sink_error``);
    an operator fixes the sink and retries (``Client.retry_promotion``)."""

    kind = "promotion-blocked"

    @property
    def checkpoint_id(self) -> Optional[int]:
        return self.problem.get("checkpoint_id")

    @property
    def sink_error(self) -> Optional[str]:
        return self.problem.get("sink_error")


class Validation(SinkgateError):
    kind = "validation"

    @property
    def field(self) -> Optional[str]:
        return self.problem.get("field")


class UnknownTask(Validation):
    kind = "unknown-task"


class NotFound(SinkgateError):
    kind = "not-found"


class Conflict(SinkgateError):
    kind = "conflict"


class BatchConflict(Conflict):
    """A batch id was reused with different rows in the same epoch."""

    kind = "batch-conflict"


class Unauthenticated(SinkgateError):
    kind = "unauthenticated"


class Forbidden(SinkgateError):
    kind = "forbidden"


class PayloadTooLarge(SinkgateError):
    kind = "payload-too-large"


class Malformed(SinkgateError):
    kind = "malformed"


class UnsupportedMediaType(SinkgateError):
    kind = "unsupported-media-type"


class BodyTimeout(SinkgateError):
    kind = "body-timeout"


class StateCorrupted(SinkgateError):
    """A stored state chunk no longer matches its SHA-256: the service
    refuses to serve it. Restart from an older checkpoint or savepoint."""

    kind = "state-corrupted"


class Internal(SinkgateError):
    kind = "internal"


KINDS: Dict[str, Type[SinkgateError]] = {
    cls.kind: cls
    for cls in (
        Overloaded, Timeout, Unavailable, TooEarly, Fenced, CheckpointAborted, RowRejected,
        OffsetRegression, PromotionBlocked, Validation, UnknownTask, NotFound, Conflict,
        BatchConflict, Unauthenticated, Forbidden, PayloadTooLarge, Malformed,
        UnsupportedMediaType, BodyTimeout, StateCorrupted, Internal,
    )
}


def from_problem(status: int, problem: Dict[str, Any]) -> SinkgateError:
    """The exception for a problem document (a kind this version does not
    know becomes the base class, or ``Transient`` for a 5xx/429)."""
    kind = str(problem.get("type", ""))
    if kind.startswith(PROBLEM_TYPE_PREFIX):
        cls = KINDS.get(kind[len(PROBLEM_TYPE_PREFIX):])
        if cls is not None:
            return cls(status, problem)
    if status in (429, 502, 503, 504):
        return Transient(status, problem)
    return SinkgateError(status, problem)
