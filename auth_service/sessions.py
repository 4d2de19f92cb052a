"""Login sessions: start one, rotate its refresh token, check it per request, end it.

A session row is the unit of revocation: access tokens name it (`sid`), refresh tokens
belong to it, and revoking it cuts both at once on every worker.
"""

import logging
import uuid
from collections.abc import Callable
from datetime import datetime, timedelta
from typing import Any

from sqlalchemy import delete, or_, update
from sqlmodel import Session, col, select

from auth_service import audit, principals, signing_keys
from auth_service.config import Settings
from auth_service.credentials import PasswordCheck, commit_if_current
from auth_service.db import release_connection
from auth_service.errors import BEARER_INVALID, AppError, ErrorCode, email_not_verified
from auth_service.metrics import LOGINS
from auth_service.models import RefreshToken, User, UserSession, utcnow
from auth_service.principals import Principal
from auth_service.request_context import current_request
from auth_service.schemas import IntrospectResponse, Token
from auth_service.security import (
    Signer,
    TokenExpired,
    TokenInvalid,
    create_access_token,
    new_opaque_token,
    seal,
    token_digest,
    unseal,
)

logger = logging.getLogger(__name__)


def _issue(signer: Signer, settings: Settings, principal: Principal, refresh_token: str) -> Token:
    """The token pair of a user's session. A superuser who must enrol a second factor
    (MFA_REQUIRED_FOR_SUPERUSERS) gets a token that grants nothing until they do."""
    enrolling = needs_enrolment(settings, principal)
    claims: dict[str, Any] = {
        "sub": str(principal.id),
        "sid": str(principal.session_id),
        "roles": [] if enrolling else principal.roles,
        "permissions": [] if enrolling else sorted(principal.permissions),
        "amr": list(principal.amr),
    }
    if enrolling:
        claims["mfa_enrollment_required"] = True
    access_token, expires_in = create_access_token(signer, settings, claims)
    return Token(access_token=access_token, expires_in=expires_in, refresh_token=refresh_token)


def needs_enrolment(settings: Settings, principal: Principal) -> bool:
    account = principal.account
    if not settings.mfa_required_for_superusers or account is None:
        return False
    return account.is_superuser and not account.mfa_enabled


def _session_expiry(settings: Settings, created_at: datetime, now: datetime) -> datetime:
    """A refresh extends a session by REFRESH_TOKEN_EXPIRE_DAYS, never past SESSION_MAX_DAYS."""
    return min(now + timedelta(days=settings.refresh_token_expire_days), created_at + _max_age(settings))


def _max_age(settings: Settings) -> timedelta:
    return timedelta(days=settings.session_max_days)


def start_session(
    session: Session,
    settings: Settings,
    check: PasswordCheck,
    user: User,
    *,
    amr: list[str] | None = None,
    within: Callable[[Session], None] | None = None,
) -> Token:
    """A new session with its first refresh token, for a password just checked.

    It commits only if that password is still the account's (see credentials.py), and
    with it the rehash under today's Argon2 parameters, if any, and `within` (spending a
    second factor). The token says what the account may do as of this transaction, not
    as of before the hash; `amr` how the user proved who they are (RFC 8176).
    """
    signer = signing_keys.signer(session, settings)
    now = utcnow()
    values: dict[str, Any] = {"last_login_at": now}
    if check.new_hash:
        values["hashed_password"] = check.new_hash
    commit_if_current(session, check, forget_failures=True, **values)
    if within is not None:
        within(session)
    client = current_request.get()
    user_session = UserSession(
        amr=" ".join(amr or ["pwd"]),
        user_id=user.id,
        created_at=now,
        last_used_at=now,
        expires_at=_session_expiry(settings, now, now),
        user_agent=client.user_agent[:512] if client and client.user_agent else None,
        client_ip=client.client_ip if client else None,
    )
    refresh_token = new_opaque_token()
    session.add(user_session)
    session.flush()  # the session row first: the refresh token references it
    session.add(RefreshToken(session_id=user_session.id, token_hash=token_digest(refresh_token)))
    details = {"session_id": str(user_session.id)}
    LOGINS.labels("succeeded").inc()
    audit.record(session, settings, "auth.login_succeeded", actor_id=user.id, subject_id=user.id, details=details)
    principal = principals.load_user(session.connection(), user.id, user_session.id)
    assert principal is not None  # its row is locked, its session just made
    tokens = _issue(signer, settings, principal, refresh_token)
    session.commit()
    return tokens


def _refresh_rejected(detail: str, code: ErrorCode = ErrorCode.INVALID_TOKEN) -> AppError:
    return AppError(401, code, detail, headers=BEARER_INVALID, oauth_error="invalid_grant")


def rotate_refresh_token(session: Session, settings: Settings, refresh_token: str) -> Token:
    """Trade a refresh token for new tokens. A token used twice ends its session (RFC 9700),
    except within REFRESH_REUSE_GRACE_SECONDS of its rotation, when it gets the same
    successor pair again (two tabs refreshing at once)."""
    now = utcnow()
    found = session.exec(
        select(RefreshToken, UserSession)
        .join(UserSession, col(UserSession.id) == col(RefreshToken.session_id))
        .where(col(RefreshToken.token_hash) == token_digest(refresh_token))
    ).first()
    if found is None:
        raise _refresh_rejected("Refresh token is invalid.")
    token, user_session = found
    if user_session.revoked_at is not None:
        raise _refresh_rejected("The session of this refresh token has ended.")
    if user_session.created_at + _max_age(settings) <= now:
        revoke_session(session, user_session.id, reason="max_age")
        session.commit()
        raise _refresh_rejected("The session has reached its maximum age; log in again.", ErrorCode.TOKEN_EXPIRED)
    if user_session.expires_at <= now:
        raise _refresh_rejected("Refresh token has expired.", ErrorCode.TOKEN_EXPIRED)
    signer = signing_keys.signer(session, settings)
    # Claim the token atomically: of two concurrent uses exactly one updates the row.
    claimed = session.exec(
        update(RefreshToken)
        .where(col(RefreshToken.id) == token.id, col(RefreshToken.used_at).is_(None))
        .values(used_at=now)
    ).rowcount
    if not claimed:
        session.rollback()
        again = _successor_within_grace(session, settings, token.id, now)
        if again is not None:
            return again
        revoke_session(session, user_session.id, reason="refresh_reused")
        details = {"session_id": str(user_session.id)}
        audit.record(session, settings, "auth.refresh_reused", subject_id=user_session.user_id, details=details)
        session.commit()
        logger.warning("refresh token reused; session %s revoked", user_session.id)
        raise _refresh_rejected("Refresh token was already used; the session has been ended.")
    new_token = new_opaque_token()
    session.add(RefreshToken(session_id=user_session.id, token_hash=token_digest(new_token)))
    user_session.last_used_at = now
    user_session.expires_at = _session_expiry(settings, user_session.created_at, now)
    session.add(user_session)
    session.flush()
    # Read the caller inside this transaction: the winner of a race answers with what it
    # rotated, even if a loser's reuse detection ends the session right after.
    principal = principals.load_user(session.connection(), user_session.user_id, user_session.id)
    if principal is None or principal.account is None or not principal.account.is_active:
        session.rollback()
        raise _refresh_rejected("The session of this refresh token has ended.")
    if settings.require_verified_email and not principal.account.is_verified:
        session.rollback()
        raise email_not_verified("invalid_grant")
    tokens = _issue(signer, settings, principal, new_token)
    if settings.refresh_reuse_grace_seconds:
        successor = seal(settings, SUCCESSOR_PURPOSE, tokens.model_dump_json().encode())
        session.exec(update(RefreshToken).where(col(RefreshToken.id) == token.id).values(successor=successor))
    session.commit()
    return tokens


SUCCESSOR_PURPOSE = "refresh-successor"


def _successor_within_grace(session: Session, settings: Settings, token_id: uuid.UUID, now: datetime) -> Token | None:
    """The pair a refresh token was just rotated into, if that was within the grace interval,
    the session still stands and that pair's refresh token is still unused; None otherwise
    (and always with the default grace of 0). A token rotated twice is plain reuse: it must
    not walk the chain to the live pair."""
    if not settings.refresh_reuse_grace_seconds:
        return None
    row = session.exec(
        select(RefreshToken.used_at, RefreshToken.successor, UserSession.revoked_at)
        .join(UserSession, col(UserSession.id) == col(RefreshToken.session_id))
        .where(col(RefreshToken.id) == token_id)
    ).first()
    if row is None or row[0] is None or row[1] is None or row[2] is not None:
        return None
    if now - row[0] > timedelta(seconds=settings.refresh_reuse_grace_seconds):
        return None
    successor = Token.model_validate_json(unseal(settings, SUCCESSOR_PURPOSE, row[1]))
    digest = token_digest(successor.refresh_token or "")
    # Locked: a rotation of the successor still in flight is waited for, then seen.
    still_unused = session.exec(
        select(RefreshToken.id)
        .where(col(RefreshToken.token_hash) == digest, col(RefreshToken.used_at).is_(None))
        .with_for_update()
    ).first()
    return successor if still_unused is not None else None


def revoke_session(session: Session, session_id: uuid.UUID, *, reason: str) -> bool:
    """Mark one session revoked (no commit); False when it was already over."""
    result = session.exec(
        update(UserSession)
        .where(col(UserSession.id) == session_id, col(UserSession.revoked_at).is_(None))
        .values(revoked_at=utcnow(), revoked_reason=reason)
    )
    return bool(result.rowcount)


def revoke_user_sessions(session: Session, user_id: uuid.UUID, *, reason: str, keep: uuid.UUID | None = None) -> int:
    """Revoke every live session of a user but `keep` (no commit); returns how many."""
    conditions = [col(UserSession.user_id) == user_id, col(UserSession.revoked_at).is_(None)]
    if keep is not None:
        conditions.append(col(UserSession.id) != keep)
    result = session.exec(update(UserSession).where(*conditions).values(revoked_at=utcnow(), revoked_reason=reason))
    return int(result.rowcount)


def logout(session: Session, settings: Settings, principal: Principal, *, everywhere: bool = False) -> None:
    """End the caller's session, or all of the user's sessions."""
    user_id = principal.id
    if everywhere:
        revoke_user_sessions(session, user_id, reason="logout_all")
    else:
        revoke_session(session, principal.session_id, reason="logout")
    details = {"session_id": str(principal.session_id), "all": everywhere}
    audit.record(session, settings, "auth.logout", actor_id=user_id, subject_id=user_id, details=details)
    session.commit()


def end_own_session(session: Session, settings: Settings, principal: Principal, session_id: uuid.UUID) -> bool:
    """Revoke a session if it belongs to the user and is live; False means "no such session"."""
    owned = session.exec(
        select(UserSession.id).where(
            col(UserSession.id) == session_id,
            col(UserSession.user_id) == principal.id,
            col(UserSession.revoked_at).is_(None),
            col(UserSession.expires_at) > utcnow(),
        )
    ).first()
    if owned is None:
        return False
    revoke_session(session, session_id, reason="session_deleted")
    user_id = principal.id
    details = {"session_id": str(session_id)}
    audit.record(session, settings, "session.revoked", actor_id=user_id, subject_id=user_id, details=details)
    session.commit()
    return True


def live_sessions(session: Session, user_id: uuid.UUID) -> list[UserSession]:
    return list(
        session.exec(
            select(UserSession)
            .where(
                col(UserSession.user_id) == user_id,
                col(UserSession.revoked_at).is_(None),
                col(UserSession.expires_at) > utcnow(),
            )
            .order_by(col(UserSession.created_at).desc())
        ).all()
    )


def prune_sessions(session: Session, retention_days: int) -> int:
    """Delete sessions that ended (expired or revoked) more than `retention_days` ago."""
    cutoff = utcnow() - timedelta(days=retention_days)
    result = session.exec(
        delete(UserSession).where(or_(col(UserSession.expires_at) < cutoff, col(UserSession.revoked_at) < cutoff))
    )
    session.commit()
    return int(result.rowcount)


def introspect(session: Session, settings: Settings, token: str) -> IntrospectResponse:
    """RFC 7662 for our access tokens: live only while the token and what it names are."""
    engine = release_connection(session)  # an unknown kid is looked up on a connection of its own
    try:
        claims, kid = principals.verify(engine, settings, token)
    except (TokenExpired, TokenInvalid):
        return IntrospectResponse(active=False)
    principal = principals.load(session.connection(), claims, kid)
    account = principal.account if principal else None
    if principal is None or (account is not None and not account.is_active):
        return IntrospectResponse(active=False)
    if account is not None and settings.require_verified_email and not account.is_verified:
        return IntrospectResponse(active=False)  # refused by every call of ours, so not live
    enrolling = needs_enrolment(settings, principal)  # grants nothing until a second factor is on
    permissions = [] if enrolling else sorted(principal.permissions)
    return IntrospectResponse(
        active=True,
        sub=claims["sub"],
        client_id=principal.client_id,
        username=account.email if account else principal.client_id,
        email=account.email if account else None,
        email_verified=account.is_verified if account else None,
        exp=claims["exp"],
        iat=claims["iat"],
        iss=claims["iss"],
        aud=claims["aud"],
        jti=claims["jti"],
        sid=claims["sid"] if account else None,
        token_type="Bearer",
        scope=" ".join(permissions),
        roles=[] if enrolling else principal.roles,
        permissions=permissions,
        amr=list(principal.amr) if account else None,
    )


def revoke_token(session: Session, settings: Settings, token: str) -> None:
    """RFC 7009: end the session of a refresh token or of a user's access token. Anything
    else (unknown, expired, a client's token) is quietly accepted, as the RFC asks."""
    session_id = None
    found = session.exec(
        select(RefreshToken.session_id).where(col(RefreshToken.token_hash) == token_digest(token))
    ).first()
    if found is not None:
        session_id = found
    else:
        engine = release_connection(session)  # an unknown kid is looked up on a connection of its own
        try:
            claims, kid = principals.verify(engine, settings, token)
        except TokenInvalid:
            return
        except TokenExpired:
            return
        principal = principals.load(session.connection(), claims, kid)
        if principal is not None and principal.account is not None:
            session_id = principal.session_id
    if session_id is None:
        return
    user_id = session.exec(select(UserSession.user_id).where(col(UserSession.id) == session_id)).first()
    if user_id is not None and revoke_session(session, session_id, reason="revoked"):
        details = {"session_id": str(session_id)}
        audit.record(session, settings, "session.revoked", actor_id=user_id, subject_id=user_id, details=details)
        session.commit()
