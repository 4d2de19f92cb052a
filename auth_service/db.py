"""The engine, the per-request session, the readiness probe, and waiting for the database."""

import logging
import time
from typing import Any

from sqlalchemy import URL, Engine, event, func, make_url, text
from sqlalchemy.exc import DBAPIError, SQLAlchemyError
from sqlalchemy.pool import NullPool
from sqlmodel import Session, create_engine

logger = logging.getLogger(__name__)

SQLITE_BUSY_TIMEOUT_MS = 30_000
CONNECT_TIMEOUT_SECONDS = 5
# libpq gives up on a connection whose sent data stays unacknowledged this long, and probes
# idle ones: a database host that vanishes (a partition, a failover) fails the request in
# seconds instead of hanging it until the kernel's own timeout, many minutes later.
TCP_SETTINGS = {
    "keepalives": 1,
    "keepalives_idle": 30,
    "keepalives_interval": 10,
    "keepalives_count": 3,
    "tcp_user_timeout": 15_000,
}


def make_engine(database_url: str, pool_size: int = 10, max_overflow: int = 20) -> Engine:
    """PostgreSQL as is; SQLite tuned so concurrent requests wait instead of failing.

    WAL lets readers run beside the one writer, and the busy timeout makes a second writer
    wait for the lock rather than raise "database is locked". pysqlite's default starts
    the transaction at the first write, so a transaction never upgrades a stale read
    snapshot (which SQLite would refuse at once).

    hide_parameters: a database error in the log shows the SQL, never the values bound to
    it (password hashes, token hashes).
    """
    if not database_url.startswith("sqlite"):
        # No pool_pre_ping: a round trip more on every checkout. A connection the server
        # dropped fails once instead (503, and the pool drops its peers); the principal read
        # of every authenticated request retries it at once on a fresh one.
        return create_engine(
            database_url,
            hide_parameters=True,
            pool_size=pool_size,
            max_overflow=max_overflow,
            connect_args={"connect_timeout": CONNECT_TIMEOUT_SECONDS, **tcp_settings(database_url)},
            pool_use_lifo=True,  # the fewest connections busy: idle ones age out
        )
    in_memory = make_url(database_url).database in (None, "", ":memory:")
    engine = create_engine(
        database_url,
        hide_parameters=True,
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


def engine_of(session: Session) -> Engine:
    """The engine a session runs on, for a transaction of its own beside the session's."""
    engine = session.get_bind()
    assert isinstance(engine, Engine)
    return engine


def release_connection(session: Session) -> Engine:
    """End the session's transaction so its pooled connection goes back before slow work
    (an Argon2id hash) or a side transaction (the throttle's, a key lookup): requests
    waiting for a hash must not hold connections or locks, and a request must never wait
    for a second connection while it holds one (the pool has no overflow: a few such
    requests at once would each hold one and wait for ever). Only between reads. Returns
    the engine, for that side transaction."""
    if session.new or session.dirty or session.deleted:
        raise RuntimeError("release_connection with changes pending: it would commit half of them")
    session.commit()
    return engine_of(session)


def tcp_settings(database_url: str | URL) -> dict[str, int]:
    """TCP_SETTINGS, except those the URL sets itself (`?tcp_user_timeout=...`)."""
    given = make_url(database_url).query
    return {name: value for name, value in TCP_SETTINGS.items() if name not in given}


def database_is_ready(engine: Engine) -> bool:
    """Whether the database answers. A pooled connection the server dropped (a failover, an
    idle timeout) fails once and empties the pool; a fresh one then decides."""
    for _ in range(2):
        try:
            with engine.connect() as connection:
                connection.execute(text("SELECT 1"))
            return True
        except DBAPIError as exc:
            if not exc.connection_invalidated:
                return False
        except SQLAlchemyError:
            return False
    return False


class DatabaseUnavailable(Exception):
    """The database did not answer within DATABASE_WAIT_SECONDS."""


def database_address(database_url: str) -> str:
    """Where the database is, for messages: host:port, or the SQLite file; never the password."""
    url = make_url(database_url)
    if url.get_backend_name() == "sqlite":
        return url.database or ":memory:"
    return f"{url.host}:{url.port or 5432}" if url.host else "the local socket"


def describe_database_error(exc: BaseException, database_url: str) -> str:
    """The driver's own first line ("Connection refused", "database ... does not exist"),
    without SQLAlchemy's statement and parameters, and with the password masked should
    a driver ever quote it."""
    original = getattr(exc, "orig", None) or exc
    lines = str(original).strip().splitlines()
    message = lines[0].strip() if lines else type(original).__name__
    password = make_url(database_url).password
    return message.replace(password, "***") if password else message


def wait_for_database(database_url: str, seconds: float) -> None:
    """Connect, retrying for up to `seconds`: a container started beside its database must not
    die because the database is still starting (nor retry forever without a word). SQLite is
    a file: nothing to wait for."""
    if make_url(database_url).get_backend_name() == "sqlite":
        return
    where = database_address(database_url)
    engine = create_engine(database_url, poolclass=NullPool, connect_args={"connect_timeout": CONNECT_TIMEOUT_SECONDS})
    deadline = time.monotonic() + seconds
    attempt = 0
    try:
        while True:
            attempt += 1
            try:
                with engine.connect() as connection:
                    connection.execute(text("SELECT 1"))
                if attempt > 1:
                    logger.info("the database at %s answers (attempt %d)", where, attempt)
                return
            except DBAPIError as exc:  # refused, still starting up, not created yet...
                problem = describe_database_error(exc, database_url)
                left = deadline - time.monotonic()
                if left <= 0:
                    raise DatabaseUnavailable(
                        f"the database at {where} did not answer within {seconds:g} s ({attempt} attempts): {problem}"
                        " (DATABASE_WAIT_SECONDS sets how long to wait)"
                    ) from None
                logger.warning(
                    "waiting for the database at %s (attempt %d, %.0f s left): %s", where, attempt, left, problem
                )
                time.sleep(min(attempt, 5, left))
    finally:
        engine.dispose()
