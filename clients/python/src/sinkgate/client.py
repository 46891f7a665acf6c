"""One method per endpoint of sinkgate's API, over ``httpx`` (sync).

Transient failures (no answer, 429, 502, 503, 504) are retried with
exponential backoff and jitter, never sooner than the service's
``Retry-After`` asks, until ``retry_for`` seconds have passed. That is safe
for every call a processor makes: a write is deduplicated by its batch id,
an ack by the stored ack, and a repeated trigger answers 409 (which
``Processor`` handles). Operator calls whose repetition would not answer
the same (issuing a token, deleting a job, declining, aborting, retrying a
promotion) are retried only when the service certainly did not act: the
connection was refused, or it answered ``overloaded`` or 429. Every other
error answer is raised at once as the exception of its problem kind
(``sinkgate.errors``).
"""

from __future__ import annotations

import hashlib
import json
import os
import random
import time
import urllib.parse
from typing import Any, Dict, Iterable, List, Mapping, Optional, Sequence, Tuple, Union

import httpx

from . import errors, state
from .models import (
    AckResult,
    Attempt,
    Checkpoint,
    CheckpointDetails,
    DeadLetter,
    IssuedToken,
    Job,
    JobSpec,
    PendingCheckpoint,
    PromotionResult,
    Recovery,
    Savepoint,
    StateHandle,
    StoredState,
    TokenInfo,
    WriteResult,
    build,
    checkpoint_details,
    to_json,
)

RETRIED_STATUSES = (429, 502, 503, 504)



def ack_body(
    task_id: str,
    epoch: int,
    offsets: Mapping[str, int],
    state: Optional[Union[StateHandle, Mapping[str, Any]]],
) -> Dict[str, Any]:
    """One ack's JSON body."""
    body: Dict[str, Any] = {"task_id": task_id, "epoch": epoch, "offsets": dict(offsets)}
    if state is not None:
        body["state"] = to_json(state)
    return body

class Client:
    """A client for one job (``job``) of a sinkgate service.

    ``base_urls``: one URL or several (replicas); each request goes to one of
    them, another on a retry. ``token``: a processor token of the job, or the
    admin token.
    """

    def __init__(
        self,
        base_urls: Union[str, Sequence[str]],
        job: str,
        token: Optional[str] = None,
        *,
        timeout: float = 60.0,
        retry_for: Optional[float] = 120.0,
        transport: Optional[httpx.BaseTransport] = None,
    ):
        self.base_urls: List[str] = [base_urls] if isinstance(base_urls, str) else list(base_urls)
        if not self.base_urls:
            raise ValueError("at least one base URL")
        self.job = job
        self.retry_for = retry_for
        headers = {"Authorization": f"Bearer {token}"} if token else {}
        self._http = httpx.Client(headers=headers, timeout=timeout, transport=transport)

    def __repr__(self) -> str:  # never shows the token
        return f"Client(base_urls={self.base_urls!r}, job={self.job!r})"

    def close(self) -> None:
        self._http.close()

    def __enter__(self) -> "Client":
        return self

    def __exit__(self, *_: Any) -> None:
        self.close()

    # --- jobs -------------------------------------------------------------

    def put_job(self, spec: Union[JobSpec, Mapping[str, Any]]) -> Job:
        """Registers the job, or updates it (``PUT`` is idempotent)."""
        return build(Job, self._call("PUT", "", json_body=to_json(spec)))

    def get_job(self) -> Job:
        return build(Job, self._call("GET", ""))

    def delete_job(self) -> None:
        self._call("DELETE", "", idempotent=False)

    def list_jobs(self) -> List[Job]:
        """Every job (admin token)."""
        answer = self._call("GET", "", absolute="/v1/jobs")
        return [build(Job, job) for job in answer["jobs"]]

    # --- the protocol -----------------------------------------------------

    def start_attempt(self, from_checkpoint: Optional[int] = None) -> Attempt:
        """Starts a new epoch: fences every older instance and answers where
        to resume (rolling a decided checkpoint forward first). With
        ``from_checkpoint``, restarts from that savepoint or retained
        checkpoint (jobs whose every output is upsert)."""
        body = {} if from_checkpoint is None else {"from_checkpoint": from_checkpoint}
        return build(Attempt, self._call("POST", "/attempts", json_body=body))

    def recovery(self) -> Recovery:
        return build(Recovery, self._call("GET", "/recovery"))

    def write(
        self,
        task_id: str,
        epoch: int,
        batch_id: str,
        rows: Sequence[Mapping[str, Any]],
        output: Optional[str] = None,
    ) -> WriteResult:
        """Stages ``rows`` (JSON objects, column → value) for the task's next
        checkpoint. ``batch_id`` must name the content: a retry with the same
        id is staged once (``duplicate: true``). ``output``: the output the
        rows go to, for a job with several. In an upsert output,
        ``delete_row(key)`` is a delete by key."""
        body = {"task_id": task_id, "epoch": epoch, "batch_id": batch_id, "rows": list(rows)}
        if output is not None:
            body["output"] = output
        return build(WriteResult, self._call("POST", "/writes", json_body=body))

    def write_ndjson(
        self,
        task_id: str,
        epoch: int,
        batch_id: str,
        rows: Iterable[Mapping[str, Any]],
        output: Optional[str] = None,
    ) -> WriteResult:
        """As ``write``, as an NDJSON body (no per-batch row cap). ``rows`` may
        be a generator: it is encoded once, in memory, so that a retry sends
        the same bytes."""
        lines = [json.dumps(row, separators=(",", ":")).encode() + b"\n" for row in rows]
        params: Dict[str, Any] = {"task_id": task_id, "epoch": epoch, "batch_id": batch_id}
        if output is not None:
            params["output"] = output
        answer = self._call(
            "POST",
            "/writes",
            content=lines,
            params=params,
            content_type="application/x-ndjson",
        )
        return build(WriteResult, answer)

    # --- state --------------------------------------------------------------

    def missing_chunks(self, chunks: Sequence[str]) -> List[str]:
        """Which of these state chunks (SHA-256, hex) the store lacks."""
        answer = self._call("POST", "/state/chunks/missing", json_body={"chunks": list(chunks)})
        return list(answer["chunks"])

    def put_chunk(self, sha256: str, content: bytes) -> Dict[str, Any]:
        """Uploads a state chunk (the service checks it hashes to ``sha256``)."""
        return self._call(
            "PUT", f"/state/chunks/{sha256}", content=[content], content_type="application/octet-stream"
        )

    def get_chunk(self, sha256: str) -> bytes:
        """A state chunk's bytes, checked against ``sha256`` (here and by the
        service, which refuses a corrupted one with ``StateCorrupted``)."""
        content = self._call("GET", f"/state/chunks/{sha256}", raw=True)
        if hashlib.sha256(content).hexdigest() != sha256:
            raise errors.SinkgateError(0, {"detail": f"state chunk {sha256} arrived with other content"})
        return content

    def save_state(self, data: Union[bytes, str, "os.PathLike[str]"]) -> state.Saved:
        """Saves bytes (or a file, given its path: read a chunk at a time) in
        the state store, incrementally: cut into chunks by content, only the
        chunks the store lacks are uploaded. Put ``saved.stored`` in the ack's
        state (``StateHandle(stored=saved.stored)``)."""
        return state.save(self, data)

    def restore_state(self, stored: Union[StoredState, Mapping[str, Any]], path: Optional[str] = None) -> Optional[bytes]:
        """The saved state, downloaded and checked chunk by chunk: as bytes,
        or written to ``path`` (then None)."""
        return state.restore(self, stored, path)

    def unreferenced_objects(self) -> List[str]:
        """External objects (``StateHandle.objects``) that no retained
        checkpoint or savepoint uses any more: release them, and delete them
        from your store only once the release succeeded."""
        return list(self._call("GET", "/state/objects/unreferenced")["uris"])

    def release_objects(self, uris: Sequence[str]) -> None:
        """Releases external objects before their owner deletes them: no ack
        may use them again. Raises ``Conflict`` (delete nothing then) if one
        is referenced again."""
        self._call("POST", "/state/objects/released", json_body={"uris": list(uris)}, idempotent=False)

    # --- savepoints -----------------------------------------------------------

    def create_savepoint(self, label: str, checkpoint_id: Optional[int] = None) -> Savepoint:
        """Keeps a decided checkpoint (default: the last) until deleted (admin)."""
        body: Dict[str, Any] = {"label": label}
        if checkpoint_id is not None:
            body["checkpoint_id"] = checkpoint_id
        return build(Savepoint, self._call("POST", "/savepoints", json_body=body))

    def savepoints(self) -> List[Savepoint]:
        return [build(Savepoint, item) for item in self._call("GET", "/savepoints")["savepoints"]]

    def delete_savepoint(self, checkpoint_id: int) -> None:
        self._call("DELETE", f"/savepoints/{checkpoint_id}", idempotent=False)

    def trigger(self, epoch: int) -> Checkpoint:
        """Triggers a checkpoint (409 ``Conflict`` when one is pending already)."""
        return build(Checkpoint, self._call("POST", "/checkpoints", json_body={"epoch": epoch}))

    def pending(self, after: int = 0, wait_ms: int = 0) -> Optional[PendingCheckpoint]:
        """The oldest pending checkpoint above ``after``, waiting up to
        ``wait_ms`` for one to be triggered (long-poll); None if none came."""
        answer = self._call(
            "GET", "/checkpoints/pending", params={"after": after, "wait_ms": wait_ms}
        )
        return None if answer is None else build(PendingCheckpoint, answer)

    def ack(
        self,
        checkpoint_id: int,
        task_id: str,
        epoch: int,
        offsets: Mapping[str, int],
        state: Optional[Union[StateHandle, Mapping[str, Any]]] = None,
        background: bool = False,
    ) -> AckResult:
        """The task has reached the checkpoint's barrier: everything it read
        below ``offsets`` is staged; ``state`` is its state there.

        ``background``: answer once the ack is recorded; if it completes the
        checkpoint, the promotion follows in the background and the task may
        write its next rows at once (``status`` is then ``pending``)."""
        params = {"promote": "background"} if background else None
        return build(
            AckResult,
            self._call(
                "POST",
                f"/checkpoints/{checkpoint_id}/acks",
                json_body=ack_body(task_id, epoch, offsets, state),
                params=params,
            ),
        )

    def ack_batch(
        self,
        checkpoint_id: int,
        epoch: int,
        acks: Mapping[str, Tuple[Mapping[str, int], Optional[Union[StateHandle, Mapping[str, Any]]]]],
        background: bool = False,
    ) -> AckResult:
        """Acks for several tasks of this process in one request, recorded
        all or none: ``acks`` maps each task id to its ``(offsets, state)``.
        A refused ack raises with ``field`` naming it (``acks[2].offsets.0``)."""
        body = {"acks": [ack_body(task, epoch, offsets, state) for task, (offsets, state) in acks.items()]}
        params = {"promote": "background"} if background else None
        return build(
            AckResult,
            self._call("POST", f"/checkpoints/{checkpoint_id}/acks/batch", json_body=body, params=params),
        )

    def decline(self, checkpoint_id: int, task_id: str, epoch: int, reason: str) -> Checkpoint:
        """The task cannot take this checkpoint: it is aborted."""
        body = {"task_id": task_id, "epoch": epoch, "reason": reason}
        return build(
            Checkpoint,
            self._call("POST", f"/checkpoints/{checkpoint_id}/declines", json_body=body, idempotent=False),
        )

    # --- operations -------------------------------------------------------

    def checkpoint(self, checkpoint_id: int) -> CheckpointDetails:
        return checkpoint_details(self._call("GET", f"/checkpoints/{checkpoint_id}"))

    def checkpoints(
        self, limit: Optional[int] = None, before: Optional[int] = None, status: Optional[str] = None
    ) -> List[Checkpoint]:
        """Newest first."""
        params = {k: v for k, v in {"limit": limit, "before": before, "status": status}.items() if v is not None}
        answer = self._call("GET", "/checkpoints", params=params)
        return [build(Checkpoint, item) for item in answer["checkpoints"]]

    def abort_checkpoint(self, checkpoint_id: int, reason: str) -> Checkpoint:
        """Aborts a pending checkpoint (admin); its staged rows stay for the next."""
        body = {"reason": reason}
        return build(
            Checkpoint, self._call("POST", f"/checkpoints/{checkpoint_id}/abort", json_body=body, idempotent=False)
        )

    def retry_promotion(self) -> PromotionResult:
        """Promotes a decided checkpoint whose promotion was blocked (admin)."""
        return build(PromotionResult, self._call("POST", "/promotions", json_body={}, idempotent=False))

    def dead_letters(
        self,
        after: Optional[int] = None,
        checkpoint_id: Optional[int] = None,
        limit: Optional[int] = None,
        output: Optional[str] = None,
    ) -> List[DeadLetter]:
        wanted = {"after": after, "checkpoint_id": checkpoint_id, "limit": limit, "output": output}
        params = {k: v for k, v in wanted.items() if v is not None}
        answer = self._call("GET", "/dead-letters", params=params)
        return [build(DeadLetter, item) for item in answer["dead_letters"]]

    def tokens(self) -> List[TokenInfo]:
        return [build(TokenInfo, item) for item in self._call("GET", "/tokens")]

    def issue_token(self, label: Optional[str] = None) -> IssuedToken:
        """A processor token for this job (admin); its secret is shown once."""
        body = {} if label is None else {"label": label}
        return build(IssuedToken, self._call("POST", "/tokens", json_body=body, idempotent=False))

    def revoke_token(self, token_id: str) -> None:
        self._call("DELETE", f"/tokens/{token_id}", idempotent=False)

    def ready(self) -> bool:
        """Whether the service can reach its database (``/readyz``)."""
        try:
            return self._http.get(self.base_urls[0] + "/readyz").status_code == 200
        except httpx.HTTPError:
            return False

    # --- transport --------------------------------------------------------

    def _call(
        self,
        method: str,
        suffix: str,
        *,
        json_body: Any = None,
        params: Optional[Mapping[str, Any]] = None,
        content: Optional[List[bytes]] = None,
        content_type: Optional[str] = None,
        absolute: Optional[str] = None,
        idempotent: bool = True,
        raw: bool = False,
    ) -> Any:
        path = absolute or f"/v1/jobs/{_quote(self.job)}{suffix}"
        deadline = None if self.retry_for is None else time.monotonic() + self.retry_for
        delay = 0.02
        attempt = 0
        while True:
            base = self.base_urls[attempt % len(self.base_urls)]
            attempt += 1
            wait: Optional[float] = None
            try:
                headers = {"Content-Type": content_type} if content_type else None
                response = self._http.request(
                    method,
                    base + path,
                    json=json_body if content is None else None,
                    content=b"".join(content) if content is not None else None,
                    params=params,
                    headers=headers,
                )
            except httpx.TransportError as error:
                failure: errors.SinkgateError = errors.Unreachable(0, {"detail": str(error)})
                if not idempotent and not isinstance(error, httpx.ConnectError):
                    raise failure  # it may have been sent and acted on
            else:
                if response.status_code < 300:
                    if raw:
                        return response.content
                    if response.status_code == 204 or not response.content:
                        return None
                    return response.json()
                failure = errors.from_problem(response.status_code, _problem(response))
                if response.status_code not in RETRIED_STATUSES:
                    raise failure
                if not idempotent and not (response.status_code == 429 or failure.kind == "overloaded"):
                    raise failure  # it may have taken effect
                wait = _retry_after(response)
            if deadline is not None and time.monotonic() >= deadline:
                raise failure
            pause = max(wait or 0.0, delay * random.uniform(0.5, 1.0))
            if deadline is not None:
                pause = min(pause, max(0.0, deadline - time.monotonic()))
            time.sleep(pause)
            delay = min(delay * 2, 1.0)


def _quote(text: str) -> str:
    return urllib.parse.quote(text, safe="")


def _problem(response: httpx.Response) -> Dict[str, Any]:
    try:
        body = response.json()
        return body if isinstance(body, dict) else {"detail": str(body)}
    except ValueError:
        return {"detail": response.text}


def _retry_after(response: httpx.Response) -> Optional[float]:
    header = response.headers.get("retry-after")
    if header is not None:
        try:
            return float(header)
        except ValueError:
            return None
    return None
