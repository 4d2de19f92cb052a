"""Email verification and password reset: the flows that prove someone reads a mailbox."""

from dataclasses import asdict
from datetime import timedelta
from typing import Any

from sqlalchemy import Engine
from sqlmodel import Session, col, select

from auth_service import audit, one_time_tokens, throttle
from auth_service.config import Settings
from auth_service.db import release_connection
from auth_service.emails import queue_mail, render_mail
from auth_service.errors import AppError, ErrorCode
from auth_service.locks import lock_user
from auth_service.models import OutboxMessage, User, utcnow
from auth_service.password_policy import check_password
from auth_service.request_context import RequestInfo, current_request
from auth_service.security import hash_password
from auth_service.sessions import revoke_user_sessions

RESET_REQUEST = "reset_request"


def mail_budget(session: Session, settings: Settings, email: str) -> None:
    """At most MAIL_EMAIL_LIMIT requested mails to one address (counted for unknown ones too)."""
    engine = release_connection(session)  # the count is a transaction of its own
    throttle.enforce(engine, f"mail:{email}", settings.mail_email_limit, "Too many mails to this address")


def link(settings: Settings, url_template: str, token: str) -> str:
    """VERIFY_EMAIL_URL or PASSWORD_RESET_URL with the public URL and the token filled in."""
    return url_template.format(public_url=settings.public_url.rstrip("/"), token=token)


def in_words(lifetime: timedelta) -> str:
    """How long a link lives, as a mail says it: "1 hour", "24 hours", "90 minutes"."""
    minutes = int(lifetime.total_seconds()) // 60
    count, unit = (minutes // 60, "hour") if minutes % 60 == 0 else (minutes, "minute")
    return f"{count} {unit}{'' if count == 1 else 's'}"


def queue_link_mail(session: Session, settings: Settings, user: User, purpose: str, lifetime: timedelta) -> None:
    """Issue a fresh token and queue its mail (`mail/<purpose>.txt|html`) to the user's address (no commit)."""
    token = one_time_tokens.issue(session, user, purpose, lifetime)
    url_template = settings.verify_email_url if purpose == one_time_tokens.VERIFY_EMAIL else settings.password_reset_url
    mail = render_mail(
        settings,
        purpose,
        user.email,
        full_name=user.full_name,
        link=link(settings, url_template, token),
        token=token,
        valid_for=in_words(lifetime),
        valid_minutes=int(lifetime.total_seconds()) // 60,
    )
    queue_mail(session, mail)


def queue_verification(session: Session, settings: Settings, user: User) -> None:
    """A fresh verification link, mailed to the user's current address (no commit)."""
    lifetime = timedelta(hours=settings.email_verify_token_hours)
    queue_link_mail(session, settings, user, one_time_tokens.VERIFY_EMAIL, lifetime)


def verify_email(session: Session, settings: Settings, token: str) -> User:
    """Mark the address verified. The account row is locked first, as every change to an
    account locks it first (no deadlock with an email change), then the token spent."""
    row, user = one_time_tokens.check(session, token, one_time_tokens.VERIFY_EMAIL)
    user = lock_user(session, user.id)
    if user.email != row.email:  # the address changed since the link was sent
        session.rollback()
        raise AppError(400, ErrorCode.INVALID_TOKEN, one_time_tokens.INVALID)
    one_time_tokens.spend(session, row)
    user.is_verified = True
    user.updated_at = utcnow()
    session.add(user)
    audit.record(
        session, settings, "email.verified", actor_id=user.id, subject_id=user.id, details={"email": user.email}
    )
    session.commit()
    session.refresh(user)
    return user


def request_password_reset(session: Session, settings: Settings, email: str) -> None:
    """Queue the request and answer at once: the same insert whether or not the email
    has an account, so neither the answer nor its timing tells (no commit). The audit
    event is written when the request is handled, naming the account if there is one."""
    mail_budget(session, settings, email)
    info = current_request.get()
    session.add(OutboxMessage(kind=RESET_REQUEST, payload={"email": email, "request": asdict(info) if info else None}))


def handle_reset_request(engine: Engine, settings: Settings, payload: dict[str, Any]) -> None:
    """Run by the outbox sender: if an active account has the email, queue its reset mail.
    Either way record `password.reset_requested`, as coming from the original request."""
    context = current_request.set(RequestInfo(**payload["request"]) if payload.get("request") else None)
    try:
        with Session(engine) as session:
            user = session.exec(select(User).where(col(User.email) == payload["email"])).first()
            if user is not None and user.is_active:
                lifetime = timedelta(minutes=settings.password_reset_token_minutes)
                queue_link_mail(session, settings, user, one_time_tokens.PASSWORD_RESET, lifetime)
            subject = user.id if user else None
            details = {"email": payload["email"]}
            audit.record(session, settings, "password.reset_requested", subject_id=subject, details=details)
            session.commit()
    finally:
        current_request.reset(context)


def reset_password(session: Session, settings: Settings, token: str, new_password: str) -> None:
    """Set the new password, end every session, and mark the email verified (the link proved it)."""
    row, user = one_time_tokens.check(session, token, one_time_tokens.PASSWORD_RESET)
    check_password(settings, new_password, user.email)
    release_connection(session)  # no lock or connection held while hashing
    new_hash = hash_password(settings, new_password)
    user = lock_user(session, user.id)  # first, as every change to an account locks it first
    if user.email != row.email:  # the address changed while we hashed: the link is void
        session.rollback()
        raise AppError(400, ErrorCode.INVALID_TOKEN, one_time_tokens.INVALID)
    one_time_tokens.spend(session, row)
    user.hashed_password = new_hash
    user.credentials_version += 1  # a login checking the old password cannot commit now
    user.is_verified = True
    user.updated_at = utcnow()
    session.add(user)
    one_time_tokens.invalidate(session, user.id, one_time_tokens.PASSWORD_RESET)
    revoke_user_sessions(session, user.id, reason="password_reset")
    throttle.note_password_success(session.connection(), user.email)  # the reset proved the owner: unlock
    audit.record(session, settings, "password.reset", actor_id=user.id, subject_id=user.id)
    session.commit()
