"""The engine, the per-request session, and the readiness probe."""

from typing import Any

from sqlalchemy import Engine, event, func, make_url, text
from sqlalchemy.exc import SQLAlchemyError
from sqlmodel import Session, create_engine

SQLITE_BUSY_TIMEOUT_MS = 30_000


def make_engine(database_url: str, pool_size: int = 10, max_overflow: int = 20) -> Engine:
    """PostgreSQL as is; SQLite tuned so concurrent requests wait instead of failing.

    WAL lets readers run beside the one writer, and the busy timeout makes a second writer
    wait for the lock rather than raise "database is locked". pysqlite's default starts
    the transaction at the first write, so a transaction never upgrades a stale read
    snapshot (which SQLite would refuse at once).
    """
    if not database_url.startswith("sqlite"):
        return create_engine(
            database_url,
            pool_pre_ping=True,
            pool_size=pool_size,
            max_overflow=max_overflow,
            connect_args={"connect_timeout": 5},
        )
    in_memory = make_url(database_url).database in (None, "", ":memory:")
    engine = create_engine(
        database_url,
        connect_args={"check_same_thread": False, "timeout": SQLITE_BUSY_TIMEOUT_MS / 1000},
        **({} if in_memory else {"pool_size": pool_size, "max_overflow": max_overflow}),
    )

    @event.listens_for(engine, "connect")
    def _sqlite_pragmas(dbapi_connection: Any, _record: Any) -> None:
        cursor = dbapi_connection.cursor()
        cursor.execute("PRAGMA journal_mode=WAL")
        cursor.execute("PRAGMA synchronous=NORMAL")
        cursor.execute(f"PRAGMA busy_timeout={SQLITE_BUSY_TIMEOUT_MS}")
        cursor.execute("PRAGMA foreign_keys=ON")
        cursor.close()
        # SQLite's lower() folds ASCII only; PostgreSQL's folds every script.
        dbapi_connection.create_function("unicode_lower", 1, _lower, deterministic=True)

    return engine


def _lower(value: str | None) -> str | None:
    return value.lower() if isinstance(value, str) else value


def unicode_lower(expression: Any, dialect_name: str) -> Any:
    """lower() that folds every script on both databases (for searches)."""
    return func.unicode_lower(expression) if dialect_name == "sqlite" else func.lower(expression)


def new_session(engine: Engine) -> Session:
    """Objects stay readable after commit: a request commits, then answers from them."""
    return Session(engine, expire_on_commit=False)


def release_connection(session: Session) -> None:
    """End the session's transaction so its pooled connection goes back before slow work
    (an Argon2id hash): requests waiting for a hash must not hold connections or locks."""
    session.commit()


def database_is_ready(engine: Engine) -> bool:
    try:
        with engine.connect() as connection:
            connection.execute(text("SELECT 1"))
        return True
    except SQLAlchemyError:
        return False
