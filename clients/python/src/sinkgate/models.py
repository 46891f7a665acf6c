"""The API's shapes (see ``openapi/openapi.json``) as dataclasses.

Answers are read leniently: fields this version does not know (a newer
server) are ignored, so an upgrade of the service never breaks a processor.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from typing import Any, Dict, List, Mapping, Optional, Type, TypeVar

T = TypeVar("T")


def _build(cls: Type[T], data: Dict[str, Any]) -> T:
    known = {f.name: f for f in dataclasses.fields(cls)}  # type: ignore[arg-type]
    nested: Dict[str, Any] = getattr(cls, "_nested", {})
    values = {}
    for name, value in data.items():
        if name not in known:
            continue
        convert = nested.get(name)
        values[name] = convert(value) if convert is not None and value is not None else value
    return cls(**values)


def _list_of(cls: Type[T]):
    return lambda items: [_build(cls, item) for item in items]


def _dict_of(cls: Type[T]):
    return lambda items: {key: _build(cls, item) for key, item in items.items()}


def to_json(value: Any) -> Any:
    """A dataclass (or a dict/list of them) as the JSON the API takes; unset
    optional fields are left out."""
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        return {
            f.name: to_json(getattr(value, f.name))
            for f in dataclasses.fields(value)
            if getattr(value, f.name) is not None
        }
    if isinstance(value, dict):
        return {key: to_json(item) for key, item in value.items()}
    if isinstance(value, (list, tuple)):
        return [to_json(item) for item in value]
    return value


@dataclass
class ExternalState:
    """State kept in the processor's own store, referred to by URI."""

    uri: str
    size_bytes: Optional[int] = None
    checksum: Optional[str] = None


@dataclass
class StoredState:
    """State in sinkgate's state store: its chunks (SHA-256, hex) in order."""

    chunks: List[str] = field(default_factory=list)
    size_bytes: int = 0


@dataclass
class StateHandle:
    """A task's state at a checkpoint: small JSON inline, a reference, state
    in sinkgate's store (``Client.save_state``), and external objects it uses."""

    inline: Any = None
    external: Optional[ExternalState] = None
    stored: Optional[StoredState] = None
    objects: Optional[List[ExternalState]] = None
    _nested = {
        "external": lambda value: _build(ExternalState, value),
        "stored": lambda value: _build(StoredState, value),
        "objects": lambda items: [_build(ExternalState, item) for item in items],
    }


@dataclass
class Savepoint:
    """A decided checkpoint kept until deleted (``Client.create_savepoint``)."""

    checkpoint_id: int
    label: str
    created_at: Optional[str] = None


@dataclass
class TaskRecovery:
    offsets: Dict[str, int] = field(default_factory=dict)
    state: Optional[StateHandle] = None
    _nested = {"state": lambda value: _build(StateHandle, value)}


@dataclass
class Recovery:
    """Where to resume: the newest committed checkpoint's offsets and states."""

    checkpoint_id: Optional[int] = None
    epoch: Optional[int] = None
    status: Optional[str] = None
    tasks: Dict[str, TaskRecovery] = field(default_factory=dict)
    offsets: Dict[str, int] = field(default_factory=dict)
    _nested = {"tasks": _dict_of(TaskRecovery)}


@dataclass
class Attempt:
    epoch: int
    recovery: Recovery
    aborted_checkpoints: List[int] = field(default_factory=list)
    rolled_forward_checkpoints: List[int] = field(default_factory=list)
    _nested = {"recovery": lambda value: _build(Recovery, value)}


@dataclass
class WriteResult:
    task_id: str
    batch_id: str
    epoch: int
    checkpoint_id: int
    staged_rows: int
    staged_bytes: int
    duplicate: bool


@dataclass
class Checkpoint:
    checkpoint_id: int
    epoch: int
    status: str
    trigger: Optional[str] = None
    acked_tasks: int = 0
    total_tasks: int = 0
    triggered_at: Optional[str] = None
    decided_at: Optional[str] = None
    committed_at: Optional[str] = None
    aborted_at: Optional[str] = None
    failure_reason: Optional[str] = None
    decide_ms: Optional[float] = None
    commit_ms: Optional[float] = None
    staged_rows: Optional[int] = None
    staged_bytes: Optional[int] = None
    promoted_rows: Optional[int] = None
    promoted_outputs: Optional[Dict[str, int]] = None
    promotion_ms: Optional[float] = None
    promotion_error: Optional[str] = None


@dataclass
class TaskAck:
    task_id: str
    acked: bool
    acked_at: Optional[str] = None
    offsets: Optional[Dict[str, int]] = None
    state: Optional[StateHandle] = None
    staged_rows: Optional[int] = None
    staged_bytes: Optional[int] = None
    _nested = {"state": lambda value: _build(StateHandle, value)}


@dataclass
class CheckpointDetails:
    """A checkpoint and every task's ack (acked or not)."""

    checkpoint: Checkpoint
    acks: List[TaskAck] = field(default_factory=list)


def checkpoint_details(data: Dict[str, Any]) -> CheckpointDetails:
    return CheckpointDetails(
        checkpoint=_build(Checkpoint, data),
        acks=_list_of(TaskAck)(data.get("acks") or []),
    )


@dataclass
class PendingCheckpoint:
    checkpoint_id: int
    epoch: int
    triggered_at: Optional[str] = None


@dataclass
class AckResult:
    checkpoint_id: int
    status: str
    acked_tasks: int
    total_tasks: int


@dataclass
class SinkSpec:
    """The sink table, and how rows land in it (``append``, or ``upsert`` or
    ``first_write_wins`` by ``key``)."""

    table: str
    mode: str = "append"
    key: Optional[List[str]] = None
    on_promotion_error: Optional[str] = None
    partial_updates: Optional[bool] = None


@dataclass
class OutputSpec:
    """One named output of a job with several: a sink table with its own
    mode and key. Every output changes in the transaction that commits a
    checkpoint."""

    name: str
    table: str
    mode: str = "append"
    key: Optional[List[str]] = None
    on_promotion_error: Optional[str] = None
    partial_updates: Optional[bool] = None


@dataclass
class CheckpointingSpec:
    interval_ms: Optional[int] = None
    timeout_ms: Optional[int] = None
    min_pause_ms: Optional[int] = None
    max_concurrent: Optional[int] = None
    retained: Optional[int] = None


@dataclass
class JobSpec:
    """A job: its tasks and either one ``sink`` or several ``outputs``."""

    tasks: List[str]
    sink: Optional[SinkSpec] = None
    outputs: Optional[List[OutputSpec]] = None
    checkpointing: Optional[CheckpointingSpec] = None


@dataclass
class SinkColumn:
    name: str
    data_type: str
    nullable: bool
    has_default: bool


@dataclass
class Output:
    """A job's output as registered, with its table's columns."""

    name: str
    table: str
    mode: str
    key: List[str] = field(default_factory=list)
    on_promotion_error: Optional[str] = None
    partial_updates: bool = False
    columns: List[SinkColumn] = field(default_factory=list)
    _nested = {"columns": _list_of(SinkColumn)}


@dataclass
class Job:
    job_id: str
    tasks: List[str]
    checkpointing: Dict[str, Any]
    epoch: int
    sink: Optional[SinkSpec] = None
    outputs: List[Output] = field(default_factory=list)
    last_decided_checkpoint: Optional[int] = None
    last_committed_checkpoint: Optional[int] = None
    pending_checkpoints: List[int] = field(default_factory=list)
    sink_columns: List[SinkColumn] = field(default_factory=list)
    created_at: Optional[str] = None
    updated_at: Optional[str] = None
    _nested = {
        "sink": lambda value: _build(SinkSpec, value),
        "outputs": _list_of(Output),
        "sink_columns": _list_of(SinkColumn),
    }


@dataclass
class DeadLetter:
    dead_letter_id: int
    checkpoint_id: int
    task_id: str
    row: Any
    error: str
    output: str = "default"
    sqlstate: Optional[str] = None
    created_at: Optional[str] = None


@dataclass
class PromotionResult:
    checkpoint_id: Optional[int] = None
    promoted_rows: int = 0
    dead_lettered_rows: int = 0


@dataclass
class TokenInfo:
    token_id: str
    job_id: str
    label: Optional[str] = None
    created_at: Optional[str] = None
    revoked_at: Optional[str] = None


@dataclass
class IssuedToken:
    token_id: str
    job_id: str
    token: str
    label: Optional[str] = None
    created_at: Optional[str] = None


def build(cls: Type[T], data: Dict[str, Any]) -> T:
    """``cls`` from an answer's JSON."""
    return _build(cls, data)


def delete_row(key: Mapping[str, Any]) -> Dict[str, Any]:
    """A row that deletes ``key`` (its key columns) from an upsert output."""
    return {OP_FIELD: "delete", **key}


OP_FIELD = "_sinkgate_op"
