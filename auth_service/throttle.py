"""Throttling with its state in the database, so every worker and host counts together.

Two shapes share one table: a fixed window of hits per key (`enforce`), and the login
lock per account, which grows with consecutive failures and never lasts longer than
LOGIN_LOCKOUT_MAX_SECONDS, so strangers cannot lock an account for good.
"""

import math
from datetime import datetime, timedelta

from sqlalchemy import Connection, Engine, case, delete, literal, or_, select, update
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


def exceeded(engine: Engine, key: str, limit: Limit | None) -> int | None:
    """Seconds to wait if `key` has used up its window, without counting a hit."""
    if limit is None:
        return None
    now = utcnow()
    with engine.connect() as connection:
        row = connection.execute(select(table.c.count, table.c.window_start).where(table.c.key == key)).first()
    if row is None or row[0] < limit.count:
        return None
    window_end = row[1] + timedelta(seconds=limit.seconds)
    return _seconds_until(window_end, now) if window_end > now else None


# --- logins --------------------------------------------------------------------------------


def account_key(email: str) -> str:
    return f"login-account:{email}"


def ip_key(ip: str) -> str:
    return f"login-ip:{ip}"


def login_locked_for(engine: Engine, email: str) -> int | None:
    """Seconds the account (any email, known or not) is locked for, or None."""
    with engine.connect() as connection:
        locked_until = connection.execute(
            select(table.c.locked_until).where(table.c.key == account_key(email))
        ).scalar_one_or_none()
    now = utcnow()
    if locked_until is None or locked_until <= now:
        return None
    return _seconds_until(locked_until, now)


def note_login_failure(engine: Engine, settings: Settings, email: str, ip: str | None) -> None:
    """Count a failure for the account and for the client IP; lock the account past the limit.

    The delay doubles with every failure past LOGIN_MAX_FAILURES, from
    LOGIN_LOCKOUT_BASE_SECONDS up to LOGIN_LOCKOUT_MAX_SECONDS. Failures are forgotten after
    LOGIN_FAILURE_RESET_SECONDS without one.
    """
    now = utcnow()
    with engine.begin() as connection:
        window = timedelta(seconds=settings.login_failure_reset_seconds)
        failures, _ = _increment(connection, account_key(email), now, window)
        if failures >= settings.login_max_failures:
            steps = failures - settings.login_max_failures
            delay = min(settings.login_lockout_base_seconds * 2 ** min(steps, 30), settings.login_lockout_max_seconds)
            connection.execute(
                update(table)
                .where(table.c.key == account_key(email))
                .values(locked_until=now + timedelta(seconds=delay))
            )
        if ip and settings.login_ip_limit:
            _increment(connection, ip_key(ip), now, timedelta(seconds=settings.login_ip_limit.seconds))


def clear_login_failures(engine: Engine, email: str) -> None:
    with engine.begin() as connection:
        connection.execute(delete(table).where(table.c.key == account_key(email)))


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
