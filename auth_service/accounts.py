"""Users: create, find, change, delete. Plain functions over a Session."""

import logging
import uuid
from typing import Any

from sqlalchemy import func, or_
from sqlalchemy.exc import IntegrityError
from sqlmodel import Session, col, select

from auth_service import audit, credentials, one_time_tokens, throttle
from auth_service.config import Settings
from auth_service.credentials import PasswordCheck, invalid_current_password
from auth_service.db import engine_of, release_connection, unicode_lower
from auth_service.email_flows import mail_budget, queue_verification
from auth_service.emails import queue_mail, render_mail
from auth_service.errors import AppError, ErrorCode, email_not_verified, not_found, permission_denied
from auth_service.locks import lock_active_superusers, lock_user
from auth_service.models import User, utcnow
from auth_service.password_policy import MAX_PASSWORD_LENGTH, check_password
from auth_service.principals import Principal
from auth_service.roles import granted_permissions, role_names
from auth_service.schemas import UserPublic, normalize_email
from auth_service.security import hash_password
from auth_service.sessions import revoke_user_sessions

logger = logging.getLogger(__name__)


def authenticate(session: Session, settings: Settings, username: str, password: str) -> tuple[PasswordCheck, User]:
    """The password check of a login, and its account; else
    INVALID_CREDENTIALS (400, invalid_grant), or 429 while the name is locked.

    An unknown or malformed email still costs one hash verification, so the time of the
    answer does not tell which emails have accounts; unknown names lock the same way.
    """
    try:
        email: str | None = normalize_email(username)
    except ValueError:
        email = None
    # The throttle key: a malformed name may be a password typed in the wrong field.
    login_name = email or f"name:{credentials.name_digest(settings, username)}"
    user = find_user_by_email(session, email) if email else None
    check = credentials.verify(session, settings, login_name, user, password)
    assert user is not None  # verify raised otherwise
    if not user.is_active:
        _refuse_right_password(session, settings, check, user, "inactive")
        raise AppError(400, ErrorCode.INACTIVE_USER, "This account is deactivated.", oauth_error="invalid_grant")
    if settings.require_verified_email and not user.is_verified:
        _refuse_right_password(session, settings, check, user, "email_not_verified")
        raise email_not_verified("invalid_grant")
    return check, user


def _refuse_right_password(session: Session, settings: Settings, check: PasswordCheck, user: User, reason: str) -> None:
    """The password was right, so it does not count toward a lock; the login is still refused."""
    credentials.record_failure(session, settings, user, user.email, reason)
    throttle.note_password_success(session.connection(), check.login_name)
    session.commit()


def confirm_own_password(session: Session, settings: Settings, user: User, password: str) -> PasswordCheck:
    """A signed-in user's current password, checked and throttled like a login (M5)."""
    error = invalid_current_password()
    return credentials.verify(session, settings, user.email, user, password, reason="current_password", error=error)


def email_taken() -> AppError:
    return AppError(409, ErrorCode.EMAIL_TAKEN, "An account with this email already exists.")


def public_users(session: Session, users: list[User]) -> list[UserPublic]:
    """The API view of users, with their role names (one query for all of them)."""
    names = role_names(session, [user.id for user in users])
    return [
        UserPublic.model_validate(
            user, update={"roles": names.get(user.id, []), "mfa_enabled": user.totp_enabled_at is not None}
        )
        for user in users
    ]


def public_user(session: Session, user: User) -> UserPublic:
    return public_users(session, [user])[0]


def check_can_manage(session: Session, actor: Principal, target: User, changes: dict[str, Any] | None = None) -> None:
    """users:write and users:delete are not a way up: a non-superuser may change or delete
    another account only if they hold every permission it holds (the rule role grants
    follow too), and only a superuser may touch a superuser or make one."""
    if actor.is_superuser:
        return
    if target.is_superuser or (changes or {}).get("is_superuser"):
        raise permission_denied("Only a superuser can change or create a superuser.")
    if not granted_permissions(session, target.id) <= actor.permissions:
        raise permission_denied("You can only manage accounts whose permissions you hold yourself.")


def check_not_self(actor: Principal, target: User, action: str) -> None:
    """Admins cannot lock themselves out by accident."""
    if target.id == actor.id:
        raise AppError(409, ErrorCode.CONFLICT, f"You cannot {action}.")


def keep_a_superuser(session: Session, user: User, *, removing: bool) -> None:
    """Refuse (409) to delete, deactivate or demote the last active superuser. Locks the
    superusers' rows, so two of them removing themselves at once cannot both succeed."""
    if removing and user.is_superuser and user.is_active and lock_active_superusers(session) <= 1:
        session.rollback()
        raise AppError(409, ErrorCode.CONFLICT, "This is the last active superuser; make another one first.")


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


def admin_update_user(
    session: Session, settings: Settings, actor: Principal, user_id: uuid.UUID, changes: dict[str, Any]
) -> User:
    """PATCH /users/{id}. Checked once up front (a quick refusal, no hash spent), and again
    under the target's row lock, in the transaction that applies the change."""
    user = get_user(session, user_id)
    check_can_manage(session, actor, user, changes)
    if changes.get("is_active") is False or changes.get("is_superuser") is False:
        check_not_self(actor, user, "deactivate or demote your own account")
    if user.id == actor.id and {"email", "password", "is_verified"} & changes.keys():
        # A stolen admin token must not move the admin's own account: /users/me asks for the password.
        raise permission_denied("Change your own email or password with /users/me (it asks for your password).")
    if "email" in changes and changes["email"] != user.email:
        mail_budget(session, settings, changes["email"])  # the new address gets a verification mail
    new_hash = _new_password_hash(session, settings, user, changes)
    removes_superuser = changes.get("is_active") is False or changes.get("is_superuser") is False
    keep_a_superuser(session, user, removing=removes_superuser)
    user = lock_user(session, user_id)
    check_can_manage(session, actor, user, changes)
    return _apply(session, settings, user, changes, new_hash, actor_id=actor.id)


def update_own_profile(session: Session, settings: Settings, user: User, changes: dict[str, Any]) -> User:
    """PATCH /users/me: the name, or the email with the current password (a stolen access
    token must not move the account's recovery address). The new and the old address each
    spend their mail budget, and the account its EMAIL_CHANGE_LIMIT."""
    current_password = changes.pop("current_password", None)
    check = None
    if "email" in changes:
        if current_password is None:  # the schema requires it; this guards other callers
            raise invalid_current_password()
        check = confirm_own_password(session, settings, user, current_password)
        if changes["email"] != user.email:
            limited = "Too many email changes for this account"
            throttle.enforce(engine_of(session), f"email-change:{user.id}", settings.email_change_limit, limited)
            mail_budget(session, settings, changes["email"])
            mail_budget(session, settings, user.email)
            if find_user_by_email(session, changes["email"]) is not None:
                raise email_taken()
    if check is not None:
        credentials.commit_if_current(session, check, error=invalid_current_password())
    user = lock_user(session, user.id)
    return _apply(session, settings, user, changes, None, actor_id=user.id)


def _new_password_hash(session: Session, settings: Settings, user: User, changes: dict[str, Any]) -> str | None:
    """Validate what can be validated before the transaction, then hash a new password
    (no connection held meanwhile)."""
    if "email" in changes and changes["email"] != user.email and find_user_by_email(session, changes["email"]):
        raise email_taken()
    if "password" not in changes:
        return None
    check_password(settings, changes["password"], changes.get("email", user.email))
    release_connection(session)
    return hash_password(settings, changes["password"])


def _apply(
    session: Session,
    settings: Settings,
    user: User,
    changes: dict[str, Any],
    new_hash: str | None,
    *,
    actor_id: uuid.UUID,
) -> User:
    """Apply validated changes to a locked user, and commit. A new email must be verified
    again (a mail goes to it, a notice to the old one); a new password or a deactivation
    ends the user's sessions."""
    now = utcnow()
    new_email = "email" in changes and changes["email"] != user.email
    if new_email:
        new = changes["email"]
        queue_mail(session, render_mail(settings, "email_changed", user.email, full_name=user.full_name, new_email=new))
        user.email = changes["email"]
        user.is_verified = False
    if new_hash is not None:
        user.hashed_password = new_hash
        user.credentials_version += 1  # a login checking the old password cannot commit now
        one_time_tokens.invalidate(session, user.id, one_time_tokens.PASSWORD_RESET)
        revoke_user_sessions(session, user.id, reason="password_changed")
    for field in ("full_name", "is_active", "is_superuser", "is_verified"):
        if field in changes:
            setattr(user, field, changes[field])
    if changes.get("is_active") is False:
        revoke_user_sessions(session, user.id, reason="deactivated")
    user.updated_at = now
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
    check = confirm_own_password(session, settings, user, current)
    new_hash = hash_password(settings, new)
    credentials.commit_if_current(
        session,
        check,
        error=invalid_current_password(),
        hashed_password=new_hash,
        credentials_version=check.version + 1,
        updated_at=utcnow(),
    )
    one_time_tokens.invalidate(session, user.id, one_time_tokens.PASSWORD_RESET)
    revoke_user_sessions(session, user.id, reason="password_changed", keep=keep_session)
    audit.record(session, settings, "password.changed", actor_id=user.id, subject_id=user.id)
    session.commit()


def delete_own_account(session: Session, settings: Settings, user: User, password: str) -> None:
    """Confirmed with the password; never the last active superuser."""
    check = confirm_own_password(session, settings, user, password)
    keep_a_superuser(session, user, removing=True)
    credentials.commit_if_current(session, check, error=invalid_current_password())
    delete_user(session, settings, user, actor_id=user.id)


def admin_delete_user(session: Session, settings: Settings, actor: Principal, user_id: uuid.UUID) -> None:
    user = get_user(session, user_id)
    check_can_manage(session, actor, user)
    check_not_self(actor, user, "delete your own account here; use DELETE /users/me")
    keep_a_superuser(session, user, removing=True)
    user = lock_user(session, user_id)
    check_can_manage(session, actor, user)
    delete_user(session, settings, user, actor_id=actor.id)


def delete_user(session: Session, settings: Settings, user: User, *, actor_id: uuid.UUID) -> None:
    """Sessions, tokens and role links go with the user (ON DELETE CASCADE); the audit trail stays.
    The delete is flushed before the audit event, so its row locks come before the audit lock."""
    details = {"email": user.email}
    session.delete(user)
    session.flush()
    audit.record(session, settings, "user.deleted", actor_id=actor_id, subject_id=user.id, details=details)
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
                unicode_lower(col(User.full_name), session.get_bind().dialect.name).like(pattern, escape="\\"),
            )
        )
    if is_active is not None:
        conditions.append(col(User.is_active) == is_active)
    count = session.exec(select(func.count()).select_from(User).where(*conditions)).one()
    users = session.exec(
        select(User).where(*conditions).order_by(col(User.created_at), col(User.id)).offset(offset).limit(limit)
    ).all()
    return list(users), count


def create_superuser(session: Session, settings: Settings, email: str, password: str) -> User | None:
    """A new, verified superuser; None when the address already has an account, which is
    never promoted implicitly (someone may have signed up with it first)."""
    email = normalize_email(email)
    if not 1 <= len(password) <= MAX_PASSWORD_LENGTH:
        raise ValueError(f"the password must be 1 to {MAX_PASSWORD_LENGTH} characters")
    if find_user_by_email(session, email) is not None:
        return None
    user = User(email=email, hashed_password=hash_password(settings, password), is_superuser=True, is_verified=True)
    session.add(user)
    try:
        session.flush()  # the unique email settles a race between workers starting together
    except IntegrityError:  # another worker created it first
        session.rollback()
        return None
    audit.record(session, settings, "user.created", subject_id=user.id, details={"email": email, "superuser": True})
    session.commit()
    session.refresh(user)
    return user


def promote_to_superuser(session: Session, settings: Settings, user: User, password: str) -> None:
    """An operator's explicit take-over of an existing account (`create-admin
    --promote-existing`): the given password replaces the old one, every session of the
    account ends, and the address counts as verified."""
    new_hash = hash_password(settings, password)
    email = user.email
    user = lock_user(session, user.id)
    if user.email != email:  # moved to another address while we hashed: not the account asked for
        session.rollback()
        raise ValueError(f"the account at {email} changed its address meanwhile; nothing changed")
    user.hashed_password = new_hash
    user.credentials_version += 1
    user.is_superuser = True
    user.is_verified = True
    user.is_active = True
    user.updated_at = utcnow()
    session.add(user)
    one_time_tokens.invalidate(session, user.id, one_time_tokens.PASSWORD_RESET)
    revoke_user_sessions(session, user.id, reason="promoted")
    audit.record(session, settings, "user.promoted", subject_id=user.id, details={"email": user.email})
    session.commit()
