"""Small helpers shared by the tests and the benchmark (no fixtures here)."""

import os
import socket
import subprocess
import sys
import threading
import time
import traceback
import uuid
from collections.abc import Iterator
from contextlib import contextmanager, suppress
from contextvars import ContextVar
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
from fastapi import FastAPI
from sqlalchemy import create_engine, event, text
from sqlalchemy.engine import make_url
from starlette.types import ASGIApp, Receive, Scope, Send

ROOT_DIR = Path(__file__).resolve().parent.parent
TEST_SECRET = "test-secret-key-that-is-long-enough-0123456789"


def free_port() -> int:
    """A loopback port nobody listens on right now."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


def service_env(database_url: str, **settings: str) -> dict[str, str]:
    """The environment for running the service or its CLI as a separate process in a test:
    the test database, a test key, cheap Argon2id, no in-app mail sender."""
    return {
        **os.environ,
        "DATABASE_URL": database_url,
        "ENVIRONMENT": "test",
        "SECRET_KEY": TEST_SECRET,
        "ARGON2_TIME_COST": "1",
        "ARGON2_MEMORY_COST": "1024",
        "ARGON2_PARALLELISM": "1",
        "OUTBOX_WORKER": "false",
        "HASH_CONCURRENCY": "2",
        "HASH_QUEUE_LIMIT": "64",
        **settings,
    }


def wait_until_healthy(url: str, timeout: float = 30) -> None:
    """Poll GET /health until it answers 200, or fail after `timeout` seconds."""
    deadline = time.monotonic() + timeout
    while True:
        try:
            if httpx.get(f"{url}/health").status_code == 200:
                return
        except httpx.TransportError:
            pass
        if time.monotonic() > deadline:
            raise RuntimeError(f"{url} did not become healthy")
        time.sleep(0.1)


@contextmanager
def fresh_postgres_database(server_url: str, prefix: str) -> Iterator[str]:
    """A uniquely named, empty database on the server, dropped afterwards."""
    name = f"{prefix}_{uuid.uuid4().hex[:12]}"
    admin = create_engine(server_url, isolation_level="AUTOCOMMIT")
    with admin.connect() as connection:
        connection.execute(text(f'CREATE DATABASE "{name}"'))
    try:
        yield make_url(server_url).set(database=name).render_as_string(hide_password=False)
    finally:
        with admin.connect() as connection:
            connection.execute(text(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))
        admin.dispose()


class Workers:
    """uvicorn processes on one database, as two workers or hosts would be."""

    def __init__(self, database_url: str, **settings: str) -> None:
        self.env = service_env(database_url, LOG_LEVEL="WARNING", HASH_CONCURRENCY="2", **settings)
        self.ports = [free_port(), free_port()]
        self.urls = [f"http://127.0.0.1:{port}" for port in self.ports]
        self.processes: list[subprocess.Popen[bytes]] = []

    def start(self) -> list[str]:
        command = [sys.executable, "-m", "uvicorn", "--factory", "auth_service.main:create_app", "--no-access-log"]
        self.processes = [
            subprocess.Popen([*command, "--port", str(port)], cwd=ROOT_DIR, env=self.env, stderr=subprocess.DEVNULL)
            for port in self.ports
        ]
        for url in self.urls:
            wait_until_healthy(url)
        return self.urls

    def stop(self) -> None:
        for process in self.processes:
            process.terminate()
            process.wait(timeout=10)
        self.processes = []


@contextmanager
def tcp_proxy(port: int, target: tuple[str, int]) -> Iterator[None]:
    """Forward 127.0.0.1:port to `target` while open: a database server that comes up when
    this starts and goes away, every connection through it cut, when it ends."""
    server = socket.create_server(("127.0.0.1", port))
    server.settimeout(0.1)
    stop = threading.Event()
    open_sockets: list[socket.socket] = []

    def pump(source: socket.socket, sink: socket.socket) -> None:
        with suppress(OSError):
            while data := source.recv(65536):
                sink.sendall(data)
        for end in (source, sink):
            with suppress(OSError):
                end.shutdown(socket.SHUT_RDWR)

    def accept() -> None:
        while not stop.is_set():
            try:
                client, _ = server.accept()
            except TimeoutError:
                continue
            upstream = socket.create_connection(target)
            open_sockets.extend((client, upstream))
            for source, sink in ((client, upstream), (upstream, client)):
                threading.Thread(target=pump, args=(source, sink), daemon=True).start()

    acceptor = threading.Thread(target=accept, daemon=True)
    acceptor.start()
    try:
        yield
    finally:
        stop.set()
        acceptor.join(timeout=5)
        server.close()
        for end in open_sockets:
            with suppress(OSError):
                end.shutdown(socket.SHUT_RDWR)
            with suppress(OSError):
                end.close()


@dataclass
class _Held:
    count: int = 0


_request_connections: ContextVar[_Held | None] = ContextVar("request_connections", default=None)


@dataclass
class SecondConnections:
    """Where a request took a second pooled connection while it held one. The pool has no
    overflow, so a few such requests at once each hold one and wait for ever: a deadlock
    anybody can cause by sending them together."""

    found: list[str] = field(default_factory=list)


class _CountPerRequest:
    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        token = _request_connections.set(_Held())
        try:
            await self.app(scope, receive, send)
        finally:
            _request_connections.reset(token)


def watch_for_second_connections(app: FastAPI) -> SecondConnections:
    """Count each request's pooled connections (before the app starts)."""
    seen = SecondConnections()
    app.add_middleware(_CountPerRequest)

    @event.listens_for(app.state.engine, "checkout")
    def checkout(_dbapi: Any, record: Any, _proxy: Any) -> None:
        held = _request_connections.get()
        if held is None:  # start-up, the outbox sender, a test's own query
            return
        record.info["held_by"] = held
        held.count += 1
        if held.count > 1:
            ours = [f"{Path(f.filename).name}:{f.lineno} {f.name}" for f in traceback.extract_stack()
                    if f"{os.sep}auth_service{os.sep}" in f.filename]  # fmt: skip
            seen.found.append(" <- ".join(reversed(ours)))

    @event.listens_for(app.state.engine, "checkin")
    def checkin(_dbapi: Any, record: Any) -> None:
        held = record.info.pop("held_by", None)
        if held is not None:
            held.count -= 1

    return seen
