"""Throttling with its state in the database, so every worker and host counts together.

Two shapes share one table: a fixed window of hits per key (`enforce`), and the login
lock per account, which grows with consecutive failures and never lasts longer than
LOGIN_LOCKOUT_MAX_SECONDS, so strangers cannot lock an account for good.
"""

import math
from datetime import datetime, timedelta
from typing import Any

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


def _upsert(connection: Connection) -> Any:
    """An INSERT ... ON CONFLICT of the counters' table, in the connection's dialect."""
    return (postgresql.insert if connection.dialect.name == "postgresql" else sqlite.insert)(table)


def _increment(connection: Connection, key: str, now: datetime, window: timedelta) -> tuple[int, datetime]:
    """Atomically count one hit in the key's window (a new window once the old one is
    over), in one statement."""
    insert = _upsert(connection)
    stamp = literal(now, UTCDateTime())
    expired = table.c.window_start <= now - window
    statement = (
        insert.values(key=key, window_start=now, count=1)
        .on_conflict_do_update(
            index_elements=[table.c.key],
            set_={
                "count": case((expired, 1), else_=table.c.count + 1),
                "window_start": case((expired, stamp), else_=table.c.window_start),
            },
        )
        .returning(table.c.count, table.c.window_start)
    )
    count, window_start = connection.execute(statement).one()
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
# A password check (a login, or a current-password check) is reserved in the database
# before its hash: refused while the name is locked, or while the checks already in flight
# would pass the failures it has left plus HASH_CONCURRENCY. So however many
# guesses arrive at once, on however many workers, at most that many are ever verified;
# honest logins racing each other only meet the bound past it. A failure is counted when
# the check ends; the client IP gets the same treatment against LOGIN_IP_LIMIT.

IN_FLIGHT_WINDOW = timedelta(minutes=1)  # a check lost to a crash stops counting after this


def account_key(email: str) -> str:
    return f"login-account:{email}"


def ip_key(ip: str) -> str:
    return f"login-ip:{ip}"


def _in_flight_key(key: str) -> str:
    return f"{key}:in-flight"


def _lock_seconds(settings: Settings, failures: int) -> int:
    """From LOGIN_LOCKOUT_BASE_SECONDS, doubling per failure past the limit, capped."""
    steps = failures - settings.login_max_failures
    return min(settings.login_lockout_base_seconds << min(steps, 30), settings.login_lockout_max_seconds)


def _start_checks(connection: Connection, keys: list[str], now: datetime) -> list[int]:
    """Count one more check in flight under each key, in one statement (a count restarts
    after a quiet minute)."""
    insert = _upsert(connection)
    expired = table.c.window_start <= now - IN_FLIGHT_WINDOW
    statement = (
        insert.values([{"key": _in_flight_key(key), "window_start": now, "count": 1} for key in keys])
        .on_conflict_do_update(
            index_elements=[table.c.key],
            set_={"count": case((expired, 1), else_=table.c.count + 1), "window_start": literal(now, UTCDateTime())},
        )
        .returning(table.c.key, table.c.count)
    )
    counts = {key: int(count) for key, count in connection.execute(statement)}
    return [counts[_in_flight_key(key)] for key in keys]


def _end_checks(connection: Connection, keys: list[str]) -> None:
    for key in keys:  # one row at a time, in _start_checks' order: a scan's order is the plan's
        connection.execute(
            update(table).where(table.c.key == _in_flight_key(key), table.c.count > 0).values(count=table.c.count - 1)
        )


def _rows(connection: Connection, keys: list[str]) -> dict[str, tuple[int, datetime, datetime | None]]:
    rows = connection.execute(
        select(table.c.key, table.c.count, table.c.window_start, table.c.locked_until).where(table.c.key.in_(keys))
    ).all()
    return {row[0]: (int(row[1]), row[2], row[3]) for row in rows}


def _check_keys(settings: Settings, login_name: str, ip: str | None) -> list[str]:
    """The counters a password check goes under: the name's, and the IP's if it is limited."""
    return [account_key(login_name), *([ip_key(ip)] if ip and settings.login_ip_limit else [])]


def reserve_password_check(engine: Engine, settings: Settings, login_name: str, ip: str | None) -> None:
    """Before the hash: 429 RATE_LIMITED, with Retry-After, while the name is locked, the IP
    has used up LOGIN_IP_LIMIT, or either has too many checks in flight; such attempts are
    not counted. Else the check is counted in flight until `end_password_check`."""
    now = utcnow()
    limit = settings.login_ip_limit if ip else None
    keys = _check_keys(settings, login_name, ip)
    with engine.begin() as connection:  # raising rolls it back: a refused check counts nowhere
        in_flight = _start_checks(connection, keys, now)
        rows = _rows(connection, keys)
        failures = 0
        if keys[0] in rows:
            count, last_failure, locked_until = rows[keys[0]]
            if locked_until is not None and locked_until > now:
                raise rate_limited(_seconds_until(locked_until, now), "Too many failed logins")
            if last_failure > now - timedelta(seconds=settings.login_failure_reset_seconds):
                failures = count
        # Up to the failures left before the lock, plus HASH_CONCURRENCY (after a lock ran
        # out, just those): at most LOGIN_MAX_FAILURES + HASH_CONCURRENCY guesses in a row.
        if in_flight[0] > max(settings.login_max_failures - failures, 0) + settings.hash_concurrency:
            raise rate_limited(1, "Too many logins at once for this account")
        if limit:
            window = timedelta(seconds=limit.seconds)
            found = rows.get(keys[1])
            ip_failures = found[0] if found and found[1] > now - window else 0
            if found and ip_failures >= limit.count:
                raise rate_limited(_seconds_until(found[1] + window, now), "Too many failed logins")
            if in_flight[1] > limit.count - ip_failures + settings.hash_concurrency:
                raise rate_limited(1, "Too many logins at once from this address")


def end_password_check(engine: Engine, settings: Settings, login_name: str, ip: str | None, *, failed: bool) -> None:
    """After the hash (or a failure to hash): the check is no longer in flight, and a
    failure is counted for the name and the IP, locking the name past the limit.

    The lock doubles with every failure past LOGIN_MAX_FAILURES, from
    LOGIN_LOCKOUT_BASE_SECONDS up to LOGIN_LOCKOUT_MAX_SECONDS. A name's failures are
    forgotten after LOGIN_FAILURE_RESET_SECONDS without one (each failure restarts it).
    """
    now = utcnow()
    key = account_key(login_name)
    limit = settings.login_ip_limit if ip else None
    with engine.begin() as connection:
        _end_checks(connection, _check_keys(settings, login_name, ip))
        if not failed:
            return
        failures, _ = _increment(connection, key, now, timedelta(seconds=settings.login_failure_reset_seconds))
        locked_until = None
        if failures >= settings.login_max_failures:
            locked_until = now + timedelta(seconds=_lock_seconds(settings, failures))
        # window_start is the last failure here: the quiet period runs from it.
        connection.execute(update(table).where(table.c.key == key).values(window_start=now, locked_until=locked_until))
        if ip and limit:
            _increment(connection, ip_key(ip), now, timedelta(seconds=limit.seconds))


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
