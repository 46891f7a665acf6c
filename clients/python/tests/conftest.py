"""The real sinkgate binary against a database of the test's own.

Needs `DATABASE_URL` (a role that may create databases; `scripts/postgres.sh`
prints one) and the built binary (`SINKGATE_BIN`, default
`target/debug/sinkgate` of the repository). `scripts/test.sh` runs these
tests after the Rust ones, with both in place.
"""

from __future__ import annotations

import os
import socket
import subprocess
import time
import uuid
from pathlib import Path
from typing import Iterator

import httpx
import psycopg
import pytest

REPO = Path(__file__).resolve().parents[3]


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@pytest.fixture
def database_url() -> Iterator[str]:
    """A fresh database, dropped afterwards."""
    base = os.environ.get("DATABASE_URL")
    if not base:
        pytest.fail("DATABASE_URL is not set (scripts/postgres.sh prints one)")
    server, _ = base.rsplit("/", 1)
    name = f"sinkgate_pytest_{uuid.uuid4().hex[:12]}"
    with psycopg.connect(base, autocommit=True) as admin:
        admin.execute(f'CREATE DATABASE "{name}"')
    try:
        yield f"{server}/{name}"
    finally:
        _drop_database(base, name)


def _drop_database(base: str, name: str) -> None:
    """Drops the test's database, ending its sessions. An autovacuum worker
    that just started on it belongs to the server, which this role may not
    end (`InsufficientPrivilege`): it is gone a moment later."""
    for attempt in range(50):
        try:
            with psycopg.connect(base, autocommit=True) as admin:
                admin.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
            return
        except psycopg.errors.InsufficientPrivilege:
            if attempt == 49:
                raise
            time.sleep(0.1)


@pytest.fixture
def service(database_url: str) -> Iterator[str]:
    """`sinkgate serve` on a free port, authentication off; its base URL."""
    yield from _serve(database_url, ["--insecure-no-auth", "--pool-size", "8"], {})


@pytest.fixture
def db(database_url: str) -> Iterator[psycopg.Connection]:
    with psycopg.connect(database_url, autocommit=True) as connection:
        yield connection


ADMIN_TOKEN = "dashboard-test-admin-token-0123456789"


@pytest.fixture
def secured_service(database_url: str) -> Iterator[str]:
    """`sinkgate serve` with authentication on (admin token `ADMIN_TOKEN`)."""
    yield from _serve(database_url, [], {"SINKGATE_ADMIN_TOKEN": ADMIN_TOKEN})


def _serve(database_url: str, args: list, env: dict) -> Iterator[str]:
    binary = os.environ.get("SINKGATE_BIN", str(REPO / "target" / "debug" / "sinkgate"))
    port = _free_port()
    process = subprocess.Popen(
        [binary, "serve", "--listen", f"127.0.0.1:{port}", "--tick-ms", "100", *args],
        env=dict(os.environ, DATABASE_URL=database_url, RUST_LOG="warn", **env),
        stdout=subprocess.DEVNULL,
    )
    url = f"http://127.0.0.1:{port}"
    try:
        _wait_ready(process, url)
        yield url
    finally:
        process.kill()
        process.wait()


def _wait_ready(process: subprocess.Popen, url: str) -> None:
    for _ in range(200):
        try:
            if httpx.get(f"{url}/readyz").status_code == 200:
                return
        except httpx.TransportError:
            pass
        assert process.poll() is None, "sinkgate exited at start"
        time.sleep(0.05)
    pytest.fail("sinkgate did not become ready")
