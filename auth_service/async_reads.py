"""The one read of an authenticated request, on PostgreSQL, without leaving the event loop.

Every other database call goes through SQLModel's synchronous sessions in the thread
pool. This one runs on every authenticated request, and a trip to the thread pool and
back (a hand-off, a wake-up, the GIL passed around) cost more than the query itself:
so a few psycopg2 connections in its asynchronous mode (`async_=1`) answer it here, their
sockets watched by the event loop. Each connection prepares the statement once.

A connection that fails is closed and the read tried once more on a new one; a second
failure, or no answer within DATABASE_READ_TIMEOUT_SECONDS (waiting for a connection
included), is a 503 like any database outage. libpq would look a host name up blocking
the loop, so the name is resolved in the thread pool and libpq given the addresses.
Nothing here is shared between event loops, threads or processes.
"""

import asyncio
import ipaddress
import logging
import socket
from collections.abc import Sequence
from typing import Any

import psycopg2
import psycopg2.extensions
from sqlalchemy import Engine

from auth_service.db import tcp_settings
from auth_service.errors import database_unavailable

logger = logging.getLogger(__name__)

POLL_OK, POLL_READ, POLL_WRITE = (
    psycopg2.extensions.POLL_OK,
    psycopg2.extensions.POLL_READ,
    psycopg2.extensions.POLL_WRITE,
)


class _Connection:
    def __init__(self, raw: Any) -> None:
        self.raw = raw
        self.prepared: set[str] = set()

    async def ready(self, loop: asyncio.AbstractEventLoop) -> None:
        """Drive the connection (connecting, or a query in flight) until it has finished."""
        fd = self.raw.fileno()
        while True:
            state = self.raw.poll()
            if state == POLL_OK:
                return
            waiter = loop.create_future()
            watch, unwatch = (
                (loop.add_reader, loop.remove_reader) if state == POLL_READ else (loop.add_writer, loop.remove_writer)
            )
            watch(fd, waiter.set_result, None)
            try:
                await waiter
            finally:
                unwatch(fd)

    def close(self) -> None:
        if not self.raw.closed:
            self.raw.close()


def _is_a_name(host: str) -> bool:
    """Not an address, a socket directory (`/...`) or a libpq list of hosts."""
    if not host or host.startswith("/") or "," in host:
        return False
    try:
        ipaddress.ip_address(host)
    except ValueError:
        return True
    return False


async def _with_addresses(params: dict[str, Any]) -> dict[str, Any]:
    """`params` with `hostaddr` set from a lookup off the loop (libpq then does none), and
    `host` kept for TLS verification; one entry per address, as libpq pairs them."""
    host = str(params.get("host") or "")
    if "hostaddr" in params or not _is_a_name(host):
        return params
    port = int(params.get("port") or 5432)
    found = await asyncio.get_running_loop().getaddrinfo(host, port, type=socket.SOCK_STREAM)
    addresses = list(dict.fromkeys(str(info[4][0]) for info in found))
    return {**params, "host": ",".join([host] * len(addresses)), "hostaddr": ",".join(addresses)}


class AsyncReads:
    """Up to `size` asynchronous connections, each doing one read at a time."""

    def __init__(self, engine: Engine, size: int, timeout: float, connect_timeout: int, prepared: bool) -> None:
        cargs, cparams = engine.dialect.create_connect_args(engine.url)
        self._connect_args: tuple[Sequence[Any], dict[str, Any]] = (
            cargs,
            {**tcp_settings(engine.url), **cparams, "connect_timeout": connect_timeout, "async_": 1},
        )
        self._size, self._timeout, self._prepared = size, timeout, prepared
        self._idle: list[_Connection] = []
        self._slots: asyncio.Semaphore | None = None  # made on the loop that uses it
        self._loop: asyncio.AbstractEventLoop | None = None

    async def fetch(
        self, name: str, prepare: str, execute: str, sql: str, values: dict[str, Any]
    ) -> list[tuple[Any, ...]]:
        """The rows of a read: `execute` of the prepared `prepare` (or the plain `sql` with
        prepared statements off). Tried once more, on a new connection, if it fails."""
        loop = asyncio.get_running_loop()
        if self._slots is None or self._loop is not loop:  # one per event loop (TestClient makes several)
            self._slots, self._loop = asyncio.Semaphore(self._size), loop
        try:
            async with asyncio.timeout(self._timeout), self._slots:  # one deadline: the wait for a slot too
                for attempt in (1, 2):
                    connection = self._idle.pop() if self._idle and attempt == 1 else None
                    try:
                        connection = connection or await self._connect()
                        rows = await self._run(connection, name, prepare, execute, sql, values)
                    except (psycopg2.Error, OSError):  # OSError: the host name could not be looked up
                        if connection is not None:
                            connection.close()
                        if attempt == 2:
                            raise
                        continue
                    except BaseException:  # cancelled mid-query: its state is unknown
                        if connection is not None:
                            connection.close()
                        raise
                    self._idle.append(connection)
                    return rows
        except (psycopg2.Error, OSError) as exc:  # TimeoutError is an OSError
            logger.error("database unavailable: %s", type(exc).__name__)
            raise database_unavailable() from None
        raise AssertionError("unreachable")

    async def _connect(self) -> _Connection:
        cargs, cparams = self._connect_args
        connection = _Connection(psycopg2.connect(*cargs, **await _with_addresses(cparams)))
        try:
            await connection.ready(asyncio.get_running_loop())
        except BaseException:
            connection.close()
            raise
        return connection

    async def _run(
        self, connection: _Connection, name: str, prepare: str, execute: str, sql: str, values: dict[str, Any]
    ) -> list[tuple[Any, ...]]:
        loop = asyncio.get_running_loop()
        cursor = connection.raw.cursor()
        try:
            if self._prepared:
                if name not in connection.prepared:
                    cursor.execute(prepare)
                    await connection.ready(loop)
                    connection.prepared.add(name)
                cursor.execute(execute, values)
            else:
                cursor.execute(sql, values)
            await connection.ready(loop)
            return [tuple(row) for row in cursor.fetchall()]
        finally:
            cursor.close()

    def close(self) -> None:
        for connection in self._idle:
            connection.close()
        self._idle.clear()
