"""Single-use tokens sent by mail: random, stored hashed, expiring, one live per purpose."""

import uuid
from datetime import timedelta

from sqlalchemy import delete, update
from sqlmodel import Session, col, select

from auth_service.errors import AppError, ErrorCode
from auth_service.models import OneTimeToken, User, utcnow
from auth_service.security import new_opaque_token, token_digest

VERIFY_EMAIL = "verify_email"
PASSWORD_RESET = "password_reset"


def invalidate(session: Session, user_id: uuid.UUID, purpose: str) -> None:
    """Spend every outstanding token of this purpose (no commit)."""
    session.exec(
        update(OneTimeToken)
        .where(
            col(OneTimeToken.user_id) == user_id,
            col(OneTimeToken.purpose) == purpose,
            col(OneTimeToken.used_at).is_(None),
        )
        .values(used_at=utcnow())
    )


def issue(session: Session, user: User, purpose: str, lifetime: timedelta) -> str:
    """A new token for the user's current email; it supersedes older ones (no commit)."""
    invalidate(session, user.id, purpose)
    token = new_opaque_token()
    session.add(
        OneTimeToken(
            user_id=user.id,
            purpose=purpose,
            token_hash=token_digest(token),
            email=user.email,
            expires_at=utcnow() + lifetime,
        )
    )
    return token


INVALID = "This link is invalid or has already been used."


def check(session: Session, token: str, purpose: str) -> tuple[OneTimeToken, User]:
    """The live token and its user, without spending it; else 400 INVALID_TOKEN / TOKEN_EXPIRED.

    A token is bound to the email it was sent to: after an email change it is void.
    """
    found = session.exec(
        select(OneTimeToken, User)
        .join(User, col(User.id) == col(OneTimeToken.user_id))
        .where(col(OneTimeToken.token_hash) == token_digest(token), col(OneTimeToken.purpose) == purpose)
    ).first()
    if found is None or found[0].used_at is not None or found[0].email != found[1].email:
        raise AppError(400, ErrorCode.INVALID_TOKEN, INVALID)
    if found[0].expires_at <= utcnow():
        raise AppError(400, ErrorCode.TOKEN_EXPIRED, "This link has expired; ask for a new one.")
    return found


def spend(session: Session, row: OneTimeToken) -> None:
    """Mark a checked token used (no commit); of two concurrent spends exactly one succeeds."""
    spent = session.exec(
        update(OneTimeToken)
        .where(col(OneTimeToken.id) == row.id, col(OneTimeToken.used_at).is_(None))
        .values(used_at=utcnow())
    ).rowcount
    if spent != 1:
        raise AppError(400, ErrorCode.INVALID_TOKEN, INVALID)


def consume(session: Session, token: str, purpose: str) -> User:
    """Check and spend in one go (no commit)."""
    row, user = check(session, token, purpose)
    spend(session, row)
    return user


def prune(session: Session, older_than: timedelta = timedelta(days=1)) -> int:
    """Delete tokens that expired more than a day ago; used ones expire like the rest."""
    result = session.exec(delete(OneTimeToken).where(col(OneTimeToken.expires_at) < utcnow() - older_than))
    session.commit()
    return int(result.rowcount)
