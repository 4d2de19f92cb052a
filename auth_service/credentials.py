"""Password checks that hold: reserved before the hash, and acted on only if still current.

A password check is slow (Argon2id), and the account can change while it runs. So a
check is reserved in the database before its hash (N simultaneous guesses cannot all slip
under the lockout, on any number of workers), and whatever it leads to (a session, a new
password, a deleted account) commits only if the account's `credentials_version` is
still the one read with the hash: a login that started before a password change can
never outlive it.
"""

import hashlib
import hmac
import uuid
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, TypeVar

from sqlalchemy import update
from sqlmodel import Session, col

from auth_service import audit, throttle
from auth_service.config import Settings
from auth_service.db import release_connection
from auth_service.errors import AppError, ErrorCode
from auth_service.metrics import LOGINS
from auth_service.models import User
from auth_service.request_context import client_ip
from auth_service.security import verify_password

T = TypeVar("T")


@dataclass(frozen=True)
class PasswordCheck:
    """A password that was right for `user_id` at `version`."""

    user_id: uuid.UUID
    login_name: str
    version: int
    new_hash: str | None = None  # the same password under today's Argon2 parameters


def invalid_credentials() -> AppError:
    return AppError(400, ErrorCode.INVALID_CREDENTIALS, "Incorrect email or password.", oauth_error="invalid_grant")


def invalid_current_password() -> AppError:
    return AppError(400, ErrorCode.INVALID_CREDENTIALS, "The current password is not correct.")


def name_digest(settings: Settings, name: str) -> str:
    """A keyed hash of a login name nobody owns: what was typed may be a password."""
    return hmac.new(settings.secret.encode(), f"login-name:{name}".encode(), hashlib.sha256).hexdigest()[:32]


def checked_like_a_password(
    session: Session,
    settings: Settings,
    login_name: str,
    user: User | None,
    check: Callable[[], T | None],
    *,
    reason: str,
    error: AppError,
) -> T:
    """Run `check` (a password's hash, a second factor's code) under the login throttle:
    reserved first (429 while the name is locked, or too many checks are in flight), with
    no connection held meanwhile. None is a failure: counted toward the lock, audited as
    `auth.login_failed` with `reason`, and raised as `error`."""
    engine = release_connection(session)
    ip = client_ip()
    try:
        throttle.reserve_password_check(engine, settings, login_name, ip)
    except AppError:
        LOGINS.labels("throttled").inc()
        raise
    try:
        result = check()
    except BaseException:  # no check happened (the hash queue was full: 503)
        throttle.end_password_check(engine, settings, login_name, ip, failed=False)
        raise
    throttle.end_password_check(engine, settings, login_name, ip, failed=result is None)
    if result is None:
        record_failure(session, settings, user, login_name, reason)
        raise error
    return result


def verify(
    session: Session,
    settings: Settings,
    login_name: str,
    user: User | None,
    password: str,
    *,
    reason: str = "invalid_credentials",
    error: AppError | None = None,
) -> PasswordCheck:
    """Throttle, then verify `password` for `user` (None: an unknown name, which costs the
    same time). A failure is counted, audited as `auth.login_failed`, and raised as
    `error` (INVALID_CREDENTIALS by default); 429 while the name is locked."""
    version = user.credentials_version if user else 0
    password_hash = user.hashed_password if user else None

    def check() -> PasswordCheck | None:
        ok, new_hash = verify_password(settings, password, password_hash)
        return PasswordCheck(user.id, login_name, version, new_hash) if ok and user is not None else None

    error = error or invalid_credentials()
    return checked_like_a_password(session, settings, login_name, user, check, reason=reason, error=error)


def record_failure(session: Session, settings: Settings, user: User | None, login_name: str, reason: str) -> None:
    """`auth.login_failed`, in a transaction of its own (the request fails). An unknown
    name is stored as a keyed hash: a password typed into the wrong field stays secret."""
    session.rollback()
    LOGINS.labels("failed").inc()
    who = {"email": user.email} if user else {"username_hash": name_digest(settings, login_name)}
    details = {**who, "reason": reason}
    audit.record(session, settings, "auth.login_failed", subject_id=user.id if user else None, details=details)
    session.commit()


def commit_if_current(
    session: Session,
    check: PasswordCheck,
    *,
    error: AppError | None = None,
    forget_failures: bool = False,
    **values: Any,
) -> None:
    """In the caller's transaction: lock the account row, and go on only if its password is
    still the one checked (and the account still active); set `values` on it.

    Else `error` (INVALID_CREDENTIALS): the password changed while it was checked. A
    login (`forget_failures`) also clears the name's earlier failures; nothing else does,
    so a right password cannot reset the count between guesses of a second factor.
    """
    result = session.exec(
        update(User)
        .where(col(User.id) == check.user_id, col(User.credentials_version) == check.version, col(User.is_active))
        .values(**(values or {"credentials_version": User.credentials_version}))
        .execution_options(synchronize_session=False)
    )
    if result.rowcount != 1:
        session.rollback()
        raise error or invalid_credentials()
    if forget_failures:
        throttle.note_password_success(session.connection(), check.login_name)
