"""Saving and restoring state in sinkgate's state store.

A state is cut into chunks by content (FastCDC, from the ``fastcdc``
package: a boundary depends on the bytes around it, so an edit changes the
chunks it touches and not every chunk after it), each named by its SHA-256.
Saving asks the store which chunks it lacks and uploads only those, a group
at a time (a file is read through a memory map, so memory stays bounded
whatever its size); restoring downloads the chunks in order and checks each
against its name.
"""

from __future__ import annotations

import hashlib
import os
from collections import deque
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Deque, Iterator, List, Mapping, Optional, Tuple, Union

from fastcdc import fastcdc

from .models import StoredState, _build

if TYPE_CHECKING:
    from .client import Client

# Chunk sizes: at least, on average, at most (the service takes up to 16 MiB).
MIN_CHUNK = 256 * 1024
AVG_CHUNK = 1024 * 1024
MAX_CHUNK = 4 * 1024 * 1024
# Chunks are checked against the store and uploaded in groups of about this many bytes.
GROUP_BYTES = 32 * 1024 * 1024
# Chunks uploaded or downloaded at once (each is a round trip; the service
# and the database work on the others meanwhile).
IN_FLIGHT = 4


@dataclass
class Saved:
    """What a save did: ``stored`` goes into the ack's state."""

    stored: StoredState
    uploaded_chunks: int
    uploaded_bytes: int


def _chunks(data: Union[bytes, str, "os.PathLike[str]"]) -> Iterator[bytes]:
    source: Any = os.fspath(data) if isinstance(data, (str, os.PathLike)) else data
    if isinstance(source, (bytes, bytearray)) and not source:
        return
    if isinstance(source, str) and os.path.getsize(source) == 0:
        return
    for chunk in fastcdc(source, MIN_CHUNK, AVG_CHUNK, MAX_CHUNK, fat=True):
        yield bytes(chunk.data)


def save(client: "Client", data: Union[bytes, str, "os.PathLike[str]"]) -> Saved:
    saved = Saved(StoredState(chunks=[], size_bytes=0), 0, 0)
    group: List[Tuple[str, bytes]] = []
    group_bytes = 0
    for chunk in _chunks(data):
        name = hashlib.sha256(chunk).hexdigest()
        saved.stored.chunks.append(name)
        saved.stored.size_bytes += len(chunk)
        group.append((name, chunk))
        group_bytes += len(chunk)
        if group_bytes >= GROUP_BYTES:
            _upload_missing(client, group, saved)
            group, group_bytes = [], 0
    _upload_missing(client, group, saved)
    return saved


def _upload_missing(client: "Client", group: List[Tuple[str, bytes]], saved: Saved) -> None:
    if not group:
        return
    missing = set(client.missing_chunks([name for name, _ in group]))
    uploads = []
    for name, chunk in group:
        if name in missing:  # a chunk that appears twice is uploaded once
            missing.discard(name)
            uploads.append((name, chunk))
    with ThreadPoolExecutor(max_workers=IN_FLIGHT) as pool:
        for _ in pool.map(lambda upload: client.put_chunk(*upload), uploads):
            pass
    saved.uploaded_chunks += len(uploads)
    saved.uploaded_bytes += sum(len(chunk) for _, chunk in uploads)


def _downloaded(client: "Client", names: List[str]) -> Iterator[bytes]:
    """The chunks, in order, a few downloaded ahead (never more held)."""
    with ThreadPoolExecutor(max_workers=IN_FLIGHT) as pool:
        ahead: Deque[Future] = deque()
        for name in names:
            ahead.append(pool.submit(client.get_chunk, name))
            if len(ahead) >= IN_FLIGHT:
                yield ahead.popleft().result()
        while ahead:
            yield ahead.popleft().result()


def restore(client: "Client", stored: Union[StoredState, Mapping[str, Any]], path: Optional[str] = None) -> Optional[bytes]:
    if not isinstance(stored, StoredState):
        stored = _build(StoredState, dict(stored))
    parts: List[bytes] = []
    size = 0
    # Into a file beside the target, renamed over it once whole: a failed
    # restore leaves the target as it was.
    partial = None if path is None else f"{path}.partial"
    out = open(partial, "wb") if partial is not None else None
    try:
        for chunk in _downloaded(client, stored.chunks):
            size += len(chunk)
            if out is not None:
                out.write(chunk)
            else:
                parts.append(chunk)
        if size != stored.size_bytes:
            raise ValueError(f"the restored state is {size} bytes, not {stored.size_bytes}")
    except BaseException:
        if out is not None:
            out.close()
            os.remove(partial)
        raise
    if out is not None:
        out.close()
        os.replace(partial, path)
        return None
    return b"".join(parts)
