"""sinkgate: exactly-once output from any stream processor into PostgreSQL.

``Client`` has one method per endpoint; ``Processor`` runs the protocol for
one instance of a job (attempt, resume, write, checkpoint); errors are the
problem kinds of ``sinkgate.errors``.
"""

from . import errors
from .client import Client
from .errors import (
    CheckpointAborted,
    Conflict,
    Fenced,
    NotFound,
    PromotionBlocked,
    RowRejected,
    SinkgateError,
    StateCorrupted,
    Transient,
)
from .models import (
    AckResult,
    Attempt,
    Checkpoint,
    CheckpointDetails,
    CheckpointingSpec,
    ExternalState,
    Job,
    JobSpec,
    Output,
    OutputSpec,
    Recovery,
    Savepoint,
    SinkSpec,
    StateHandle,
    StoredState,
    WriteResult,
    delete_row,
)
from .processor import Processor, offsets_of

__all__ = [
    "AckResult",
    "Attempt",
    "Checkpoint",
    "CheckpointAborted",
    "CheckpointDetails",
    "CheckpointingSpec",
    "Client",
    "Conflict",
    "ExternalState",
    "Fenced",
    "Job",
    "JobSpec",
    "NotFound",
    "Output",
    "OutputSpec",
    "Processor",
    "PromotionBlocked",
    "Recovery",
    "RowRejected",
    "SinkSpec",
    "SinkgateError",
    "Savepoint",
    "StateCorrupted",
    "StoredState",
    "StateHandle",
    "Transient",
    "WriteResult",
    "delete_row",
    "errors",
    "offsets_of",
]
