"""Users: create, find, change, delete. Plain functions over a Session."""

import logging
import uuid
from typing import Any

from sqlalchemy import Engine, func, or_
from sqlalchemy.exc import IntegrityError
from sqlmodel import Session, col, select

from auth_service import audit, one_time_tokens, throttle
from auth_service.config import Settings
from auth_service.db import release_connection
from auth_service.email_flows import queue_verification
from auth_service.emails import queue_mail, render_mail
from auth_service.errors import AppError, ErrorCode, not_found, permission_denied
from auth_service.metrics import LOGINS
from auth_service.models import User, utcnow
from auth_service.password_policy import MAX_PASSWORD_LENGTH, check_password
from auth_service.request_context import current_request
from auth_service.roles import role_names
from auth_service.schemas import UserPublic, normalize_email, printable
from auth_service.security import hash_password, verify_password
from auth_service.sessions import Principal, revoke_user_sessions

logger = logging.getLogger(__name__)


def authenticate(session: Session, settings: Settings, username: str, password: str) -> User:
    """The user with this email and password, or INVALID_CREDENTIALS (400, invalid_grant).

    An unknown or malformed email still costs one hash verification, so the time of the
    answer does not tell which emails have accounts. Upgrades an outdated hash.

    Throttled first (429, no hash spent): an account locked after repeated failures, or a
    client IP with too many failures across accounts. Unknown emails lock the same way.
    """
    try:
        email: str | None = normalize_email(username)
    except ValueError:
        email = None
    login_name = email or printable(username.strip().lower(), 254)  # a throttle key and an audit detail
    engine = session.get_bind()
    assert isinstance(engine, Engine)
    client = current_request.get()
    ip = client.client_ip if client else None
    wait = throttle.login_locked_for(engine, login_name)
    if wait is None and ip:
        wait = throttle.exceeded(engine, throttle.ip_key(ip), settings.login_ip_limit)
    if wait is not None:
        LOGINS.labels("throttled").inc()
        raise throttle.rate_limited(wait, "Too many failed logins")
    user = find_user_by_email(session, email) if email else None
    release_connection(session)
    ok, new_hash = verify_password(settings, password, user.hashed_password if user else None)
    if not ok or user is None:
        _login_failed(session, settings, user, login_name, "invalid_credentials")
        throttle.note_login_failure(engine, settings, login_name, ip)
        raise AppError(400, ErrorCode.INVALID_CREDENTIALS, "Incorrect email or password.", oauth_error="invalid_grant")
    throttle.clear_login_failures(engine, login_name)
    if not user.is_active:
        _login_failed(session, settings, user, user.email, "inactive")
        raise AppError(400, ErrorCode.INACTIVE_USER, "This account is deactivated.", oauth_error="invalid_grant")
    if settings.require_verified_email and not user.is_verified:
        _login_failed(session, settings, user, user.email, "email_not_verified")
        raise AppError(
            403,
            ErrorCode.EMAIL_NOT_VERIFIED,
            "Verify your email address before logging in.",
            oauth_error="invalid_grant",
        )
    if new_hash:
        user.hashed_password = new_hash
    return user


def _login_failed(session: Session, settings: Settings, user: User | None, email: str, reason: str) -> None:
    """A failed login is recorded though the request fails: in a transaction of its own."""
    session.rollback()
    LOGINS.labels("failed").inc()
    subject = user.id if user else None
    audit.record(session, settings, "auth.login_failed", subject_id=subject, details={"email": email, "reason": reason})
    session.commit()


def email_taken() -> AppError:
    return AppError(409, ErrorCode.EMAIL_TAKEN, "An account with this email already exists.")


def invalid_current_password() -> AppError:
    return AppError(400, ErrorCode.INVALID_CREDENTIALS, "The current password is not correct.")


def public_users(session: Session, users: list[User]) -> list[UserPublic]:
    """The API view of users, with their role names (one query for all of them)."""
    names = role_names(session, [user.id for user in users])
    return [UserPublic.model_validate(user, update={"roles": names.get(user.id, [])}) for user in users]


def public_user(session: Session, user: User) -> UserPublic:
    return public_users(session, [user])[0]


def check_can_manage(actor: Principal, target: User, changes: dict[str, Any] | None = None) -> None:
    """Only a superuser may change a superuser or make one: users:write is not a way up."""
    if (target.is_superuser or (changes or {}).get("is_superuser")) and not actor.user.is_superuser:
        raise permission_denied("Only a superuser can change or create a superuser.")


def check_not_self(actor: Principal, target: User, action: str) -> None:
    """Admins cannot lock themselves out by accident."""
    if target.id == actor.user.id:
        raise AppError(409, ErrorCode.CONFLICT, f"You cannot {action}.")


def get_user(session: Session, user_id: uuid.UUID) -> User:
    user = session.get(User, user_id)
    if user is None:
        raise not_found("User")
    return user


def find_user_by_email(session: Session, email: str) -> User | None:
    return session.exec(select(User).where(User.email == email)).first()


def create_user(
    session: Session,
    settings: Settings,
    *,
    email: str,
    password: str,
    full_name: str | None = None,
    actor_id: uuid.UUID | None = None,
    is_active: bool = True,
    is_superuser: bool = False,
    is_verified: bool = False,
) -> User:
    """Insert a user; the unique index, not the pre-check, settles a race (409, never 500).

    With no actor it is a signup; with one, an admin's creation."""
    check_password(settings, password, email)
    if find_user_by_email(session, email) is not None:
        raise email_taken()
    release_connection(session)
    user = User(
        email=email,
        hashed_password=hash_password(settings, password),
        full_name=full_name,
        is_active=is_active,
        is_superuser=is_superuser,
        is_verified=is_verified,
    )
    session.add(user)
    _flush_unique_email(session)
    if not user.is_verified:
        queue_verification(session, settings, user)
    audit.record(
        session,
        settings,
        "user.created" if actor_id else "user.signed_up",
        actor_id=actor_id or user.id,
        subject_id=user.id,
        details={"email": user.email},
    )
    session.commit()
    session.refresh(user)
    return user


def _flush_unique_email(session: Session) -> None:
    try:
        session.flush()
    except IntegrityError:
        session.rollback()
        raise email_taken() from None


def update_user(
    session: Session, settings: Settings, user: User, changes: dict[str, Any], *, actor_id: uuid.UUID
) -> User:
    """Apply already-validated changes. A new email must be verified again (a mail goes to
    it); a new password or a deactivation ends the user's sessions."""
    new_email = "email" in changes and changes["email"] != user.email
    if new_email and find_user_by_email(session, changes["email"]) is not None:
        raise email_taken()
    if "password" in changes:
        check_password(settings, changes["password"], changes.get("email", user.email))
        release_connection(session)
        user.hashed_password = hash_password(settings, changes["password"])
    if new_email:
        new = changes["email"]
        queue_mail(session, render_mail(settings, "email_changed", user.email, full_name=user.full_name, new_email=new))
        user.email = changes["email"]
        user.is_verified = False
    if "password" in changes:
        one_time_tokens.invalidate(session, user.id, one_time_tokens.PASSWORD_RESET)
        revoke_user_sessions(session, user.id, reason="password_changed")
    for field in ("full_name", "is_active", "is_superuser", "is_verified"):
        if field in changes:
            setattr(user, field, changes[field])
    if changes.get("is_active") is False:
        revoke_user_sessions(session, user.id, reason="deactivated")
    user.updated_at = utcnow()
    session.add(user)
    _flush_unique_email(session)
    if new_email and not user.is_verified:
        queue_verification(session, settings, user)
    fields = sorted(changes)  # names only, never values: a password is one
    audit.record(session, settings, "user.updated", actor_id=actor_id, subject_id=user.id, details={"fields": fields})
    session.commit()
    session.refresh(user)
    return user


def change_password(
    session: Session, settings: Settings, user: User, current: str, new: str, *, keep_session: uuid.UUID
) -> None:
    """Check the current password, set the new one, and end every other session."""
    check_password(settings, new, user.email)
    release_connection(session)
    ok, _ = verify_password(settings, current, user.hashed_password)
    if not ok:
        raise invalid_current_password()
    user.hashed_password = hash_password(settings, new)
    user.updated_at = utcnow()
    session.add(user)
    one_time_tokens.invalidate(session, user.id, one_time_tokens.PASSWORD_RESET)
    revoke_user_sessions(session, user.id, reason="password_changed", keep=keep_session)
    audit.record(session, settings, "password.changed", actor_id=user.id, subject_id=user.id)
    session.commit()


def delete_own_account(session: Session, settings: Settings, user: User, password: str) -> None:
    release_connection(session)
    ok, _ = verify_password(settings, password, user.hashed_password)
    if not ok:
        raise invalid_current_password()
    delete_user(session, settings, user, actor_id=user.id)


def delete_user(session: Session, settings: Settings, user: User, *, actor_id: uuid.UUID) -> None:
    """Sessions, tokens and role links go with the user (ON DELETE CASCADE); the audit trail stays."""
    audit.record(
        session, settings, "user.deleted", actor_id=actor_id, subject_id=user.id, details={"email": user.email}
    )
    session.delete(user)
    session.commit()


def list_users(
    session: Session, *, offset: int, limit: int, q: str | None = None, is_active: bool | None = None
) -> tuple[list[User], int]:
    conditions = []
    if q:
        pattern = "%" + q.lower().replace("\\", "\\\\").replace("%", "\\%").replace("_", "\\_") + "%"
        conditions.append(
            or_(
                col(User.email).like(pattern, escape="\\"),
                func.lower(col(User.full_name)).like(pattern, escape="\\"),
            )
        )
    if is_active is not None:
        conditions.append(col(User.is_active) == is_active)
    count = session.exec(select(func.count()).select_from(User).where(*conditions)).one()
    users = session.exec(
        select(User).where(*conditions).order_by(col(User.created_at), col(User.id)).offset(offset).limit(limit)
    ).all()
    return list(users), count


def ensure_superuser(session: Session, settings: Settings, email: str, password: str) -> tuple[User, bool]:
    """Create the superuser, or promote the existing account; True when it was created."""
    email = normalize_email(email)
    if not 1 <= len(password) <= MAX_PASSWORD_LENGTH:
        raise ValueError(f"the password must be 1 to {MAX_PASSWORD_LENGTH} characters")
    user = find_user_by_email(session, email)
    if user is not None:
        if not user.is_superuser:
            user.is_superuser = True
            user.updated_at = utcnow()
            session.add(user)
            session.commit()
        return user, False
    user = User(
        email=email,
        hashed_password=hash_password(settings, password),
        is_superuser=True,
        is_verified=True,
    )
    session.add(user)
    try:
        session.commit()
    except IntegrityError:  # another worker created it first
        session.rollback()
        existing = find_user_by_email(session, email)
        assert existing is not None
        return existing, False
    session.refresh(user)
    return user, True
