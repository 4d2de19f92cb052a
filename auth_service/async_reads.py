"""The one read of an authenticated request, on PostgreSQL, without leaving the event loop.

Every other database call goes through SQLModel's synchronous sessions in the thread
pool. This one runs on every authenticated request, and a trip to the thread pool and
back (a hand-off, a wake-up, the GIL passed around) cost more than the query itself:
so a few psycopg2 connections in its asynchronous mode (`async_=1`) answer it here, their
sockets watched by the event loop. Each connection prepares the statement once.

A connection that fails is closed and the read tried once more on a new one; a second
failure, or no answer within DATABASE_READ_TIMEOUT_SECONDS, is a 503 like any database
outage. Nothing here is shared between event loops, threads or processes.
"""

import asyncio
import logging
from collections.abc import Sequence
from typing import Any

import psycopg2
import psycopg2.extensions
from sqlalchemy import Engine

from auth_service.errors import AppError, ErrorCode

logger = logging.getLogger(__name__)

POLL_OK, POLL_READ, POLL_WRITE = (
    psycopg2.extensions.POLL_OK,
    psycopg2.extensions.POLL_READ,
    psycopg2.extensions.POLL_WRITE,
)


def unavailable() -> AppError:
    detail = "The database is unavailable; try again shortly."
    return AppError(503, ErrorCode.SERVICE_UNAVAILABLE, detail, headers={"Retry-After": "5"})


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


class AsyncReads:
    """Up to `size` asynchronous connections, each doing one read at a time."""

    def __init__(self, engine: Engine, size: int, timeout: float, connect_timeout: int, prepared: bool) -> None:
        cargs, cparams = engine.dialect.create_connect_args(engine.url)
        self._connect_args: tuple[Sequence[Any], dict[str, Any]] = (
            cargs,
            {**cparams, "connect_timeout": connect_timeout, "async_": 1},
        )
        self._size, self._timeout, self._prepared = size, timeout, prepared
        self._idle: list[_Connection] = []
        self._slots: asyncio.Semaphore | None = None  # made on the loop that uses it

    async def fetch(
        self, name: str, prepare: str, execute: str, sql: str, values: dict[str, Any]
    ) -> list[tuple[Any, ...]]:
        """The rows of a read: `execute` of the prepared `prepare` (or the plain `sql` with
        prepared statements off). Tried once more, on a new connection, if it fails."""
        if self._slots is None:
            self._slots = asyncio.Semaphore(self._size)
        async with self._slots:
            for attempt in (1, 2):
                try:
                    async with asyncio.timeout(self._timeout):
                        connection = self._idle.pop() if self._idle else await self._connect()
                        try:
                            rows = await self._run(connection, name, prepare, execute, sql, values)
                        except BaseException:  # failed, or cancelled mid-query: its state is unknown
                            connection.close()
                            raise
                except (psycopg2.Error, TimeoutError) as exc:
                    if attempt == 2:
                        logger.error("database unavailable: %s", type(exc).__name__)
                        raise unavailable() from None
                    continue
                self._idle.append(connection)
                return rows
        raise AssertionError("unreachable")

    async def _connect(self) -> _Connection:
        cargs, cparams = self._connect_args
        connection = _Connection(psycopg2.connect(*cargs, **cparams))
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
