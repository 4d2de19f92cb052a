"""Small helpers shared by the tests and the benchmark (no fixtures here)."""

import os
import socket
import subprocess
import sys
import threading
import time
import uuid
from collections.abc import Iterator
from contextlib import contextmanager, suppress
from pathlib import Path

import httpx
from sqlalchemy import create_engine, text
from sqlalchemy.engine import make_url

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
