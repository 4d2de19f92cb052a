"""Throttling with its state in the database, so every worker and host counts together.

Two shapes share one table: a fixed window of hits per key (`enforce`), and the login
lock per account, which grows with consecutive failures and never lasts longer than
LOGIN_LOCKOUT_MAX_SECONDS, so strangers cannot lock an account for good.
"""

import math
from datetime import datetime, timedelta

from sqlalchemy import Connection, Engine, case, delete, literal, or_, select, text, update
from sqlalchemy.dialects import postgresql, sqlite

from auth_service.config import Limit, Settings
from auth_service.errors import AppError, ErrorCode
from auth_service.models import RateLimit, UTCDateTime, utcnow

table = RateLimit.__table__  # type: ignore[attr-defined]


def rate_limited(retry_after: int, what: str = "Too many requests") -> AppError:
    return AppError(
        429,
        ErrorCode.RATE_LIMITED,
        f"{what}; try again in {retry_after} seconds.",
        headers={"Retry-After": str(retry_after)},
    )


def _seconds_until(moment: datetime, now: datetime) -> int:
    return max(1, math.ceil((moment - now).total_seconds()))


def _increment(connection: Connection, key: str, now: datetime, window: timedelta) -> tuple[int, datetime]:
    """Atomically count one hit in the key's window (a new window once the old one is over)."""
    insert = (postgresql.insert if connection.dialect.name == "postgresql" else sqlite.insert)(table)
    stamp = literal(now, UTCDateTime())
    expired = table.c.window_start <= now - window
    statement = insert.values(key=key, window_start=now, count=1).on_conflict_do_update(
        index_elements=[table.c.key],
        set_={
            "count": case((expired, 1), else_=table.c.count + 1),
            "window_start": case((expired, stamp), else_=table.c.window_start),
        },
    )
    connection.execute(statement)
    count, window_start = connection.execute(
        select(table.c.count, table.c.window_start).where(table.c.key == key)
    ).one()
    return int(count), window_start


def enforce(engine: Engine, key: str, limit: Limit | None, what: str = "Too many requests") -> None:
    """Count this request under `key`; 429 RATE_LIMITED with Retry-After past the limit."""
    if limit is None:
        return
    now = utcnow()
    with engine.begin() as connection:
        count, window_start = _increment(connection, key, now, timedelta(seconds=limit.seconds))
    if count > limit.count:
        raise rate_limited(_seconds_until(window_start + timedelta(seconds=limit.seconds), now), what)


# --- logins --------------------------------------------------------------------------------
#
# A password check (a login, or a current-password check) asks whether its name or
# client IP is locked right before the hash, inside the hash slot, and a failure is
# counted before the slot is given back (credentials.verify). So however many guesses
# arrive at once, at most LOGIN_MAX_FAILURES + HASH_CONCURRENCY of them (per worker) are
# ever verified, and honest logins racing each other are never refused for it.


def account_key(email: str) -> str:
    return f"login-account:{email}"


def ip_key(ip: str) -> str:
    return f"login-ip:{ip}"


def _lock_seconds(settings: Settings, failures: int) -> int:
    """From LOGIN_LOCKOUT_BASE_SECONDS, doubling per failure past the limit, capped."""
    steps = failures - settings.login_max_failures
    return min(settings.login_lockout_base_seconds << min(steps, 30), settings.login_lockout_max_seconds)


def refuse_if_locked(engine: Engine, settings: Settings, login_name: str, ip: str | None) -> None:
    """429 RATE_LIMITED, with Retry-After, while the name is locked or the IP has used up
    LOGIN_IP_LIMIT; such attempts are not counted. One query for both."""
    limit = settings.login_ip_limit
    keys = [account_key(login_name)] + ([ip_key(ip)] if ip and limit else [])
    with engine.connect() as connection:
        rows = connection.execute(
            select(table.c.key, table.c.count, table.c.window_start, table.c.locked_until).where(table.c.key.in_(keys))
        ).all()
    now = utcnow()
    for key, count, window_start, locked_until in rows:
        if key == keys[0] and locked_until is not None and locked_until > now:
            raise rate_limited(_seconds_until(locked_until, now), "Too many failed logins")
        if key != keys[0] and limit and count >= limit.count:
            window_end = window_start + timedelta(seconds=limit.seconds)
            if window_end > now:
                raise rate_limited(_seconds_until(window_end, now), "Too many failed logins")


def note_login_failure(engine: Engine, settings: Settings, login_name: str, ip: str | None) -> None:
    """Count a failure for the name and for the client IP; lock the name past the limit.

    The lock doubles with every failure past LOGIN_MAX_FAILURES, from
    LOGIN_LOCKOUT_BASE_SECONDS up to LOGIN_LOCKOUT_MAX_SECONDS. A name's failures are
    forgotten after LOGIN_FAILURE_RESET_SECONDS without one (each failure restarts that
    period). A lost counter after a crash is harmless, so PostgreSQL need not wait for
    the disk.
    """
    now = utcnow()
    key = account_key(login_name)
    with engine.begin() as connection:
        if connection.dialect.name == "postgresql":
            connection.execute(text("SET LOCAL synchronous_commit TO OFF"))
        failures, _ = _increment(connection, key, now, timedelta(seconds=settings.login_failure_reset_seconds))
        locked_until = None
        if failures >= settings.login_max_failures:
            locked_until = now + timedelta(seconds=_lock_seconds(settings, failures))
        # window_start is the last failure here: the quiet period runs from it.
        connection.execute(update(table).where(table.c.key == key).values(window_start=now, locked_until=locked_until))
        if ip and settings.login_ip_limit:
            _increment(connection, ip_key(ip), now, timedelta(seconds=settings.login_ip_limit.seconds))


def note_password_success(connection: Connection, login_name: str) -> None:
    """The password was right (or a reset proved the owner): forget the name's failures,
    lock included. In the caller's transaction."""
    connection.execute(delete(table).where(table.c.key == account_key(login_name)))


def prune(engine: Engine, older_than: timedelta = timedelta(days=1)) -> int:
    """Delete counters idle for a day: their windows and locks are long over."""
    cutoff = utcnow() - older_than
    with engine.begin() as connection:
        result = connection.execute(
            delete(table).where(
                table.c.window_start < cutoff, or_(table.c.locked_until.is_(None), table.c.locked_until < cutoff)
            )
        )
    return int(result.rowcount)
