"""The engine, the per-request session, and the readiness probe."""

from collections.abc import Iterator
from typing import Any

from sqlalchemy import Engine, event, text
from sqlalchemy.exc import SQLAlchemyError
from sqlmodel import Session, create_engine

SQLITE_BUSY_TIMEOUT_MS = 30_000


def make_engine(database_url: str) -> Engine:
    """PostgreSQL as is; SQLite tuned so concurrent requests wait instead of failing.

    WAL lets readers run beside the one writer, and the busy timeout makes a second writer
    wait for the lock rather than raise "database is locked". pysqlite's default starts
    the transaction at the first write, so a transaction never upgrades a stale read
    snapshot (which SQLite would refuse at once).
    """
    if not database_url.startswith("sqlite"):
        return create_engine(database_url, pool_pre_ping=True, connect_args={"connect_timeout": 5})
    engine = create_engine(
        database_url, connect_args={"check_same_thread": False, "timeout": SQLITE_BUSY_TIMEOUT_MS / 1000}
    )

    @event.listens_for(engine, "connect")
    def _sqlite_pragmas(dbapi_connection: Any, _record: Any) -> None:
        cursor = dbapi_connection.cursor()
        cursor.execute("PRAGMA journal_mode=WAL")
        cursor.execute("PRAGMA synchronous=NORMAL")
        cursor.execute(f"PRAGMA busy_timeout={SQLITE_BUSY_TIMEOUT_MS}")
        cursor.execute("PRAGMA foreign_keys=ON")
        cursor.close()

    return engine


def session_scope(engine: Engine) -> Iterator[Session]:
    with Session(engine) as session:
        yield session


def database_is_ready(engine: Engine) -> bool:
    try:
        with engine.connect() as connection:
            connection.execute(text("SELECT 1"))
        return True
    except SQLAlchemyError:
        return False
