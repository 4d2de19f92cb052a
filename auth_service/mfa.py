"""Two-factor authentication: TOTP (RFC 6238: 30 s, 6 digits, SHA-1, one step either way)
and one-time recovery codes.

The TOTP secret is sealed at rest with a key derived from SECRET_KEY, and never logged,
audited or shown again after enrolment. Recovery codes are kept as keyed hashes. Each
code is accepted once: a TOTP step is remembered (`totp_last_step`), a recovery code is
spent, both with a conditional update in the transaction that starts the session, so
two requests with one code cannot both win. Wrong codes count toward the account's login
lock, exactly like wrong passwords.
"""

import base64
import hashlib
import hmac
import io
import re
import secrets
import uuid
from dataclasses import dataclass
from datetime import datetime, timedelta

import pyotp
import segno
from sqlalchemy import func, or_, update
from sqlmodel import Session, col, select

from auth_service import audit, sessions
from auth_service.accounts import check_can_manage, check_not_self, confirm_own_password, get_user
from auth_service.config import Settings
from auth_service.credentials import PasswordCheck, checked_like_a_password
from auth_service.emails import queue_mail, render_mail
from auth_service.errors import AppError, ErrorCode, not_found
from auth_service.locks import lock_user
from auth_service.models import MfaChallenge, RecoveryCode, User, utcnow
from auth_service.principals import Principal
from auth_service.schemas import Token
from auth_service.security import new_opaque_token, seal, token_digest, unseal

MFA_GRANT = "urn:auth_service:params:oauth:grant-type:mfa-otp"
AMR_PASSWORD, AMR_SECOND_FACTOR = ["pwd"], ["pwd", "otp"]
SEAL_PURPOSE = "totp"
RECOVERY_CODES = 10
TOTP_CODE = re.compile(r"^[0-9]{6}$")  # ASCII digits only (\d takes any script's)
RECOVERY_ALPHABET = "abcdefghjkmnpqrstuvwxyz23456789"  # no 0/o, 1/l/i: easy to read and type


def invalid_code() -> AppError:
    return AppError(400, ErrorCode.INVALID_CREDENTIALS, "The code is not correct.", oauth_error="invalid_grant")


# --- codes --------------------------------------------------------------------------------


def _totp(settings: Settings, sealed: str) -> pyotp.TOTP:
    return pyotp.TOTP(unseal(settings, SEAL_PURPOSE, sealed).decode())


def matching_step(totp: pyotp.TOTP, code: str, now: datetime) -> int | None:
    """The time step (the current one, or one either way) whose code this is."""
    if not TOTP_CODE.match(code):
        return None
    current = totp.timecode(now)
    for step in (current - 1, current, current + 1):
        if hmac.compare_digest(totp.generate_otp(step), code):
            return step
    return None


def _normalized_recovery_code(code: str) -> str:
    return "".join(c for c in code.lower() if c.isalnum())


def _recovery_digest(settings: Settings, user_id: uuid.UUID, code: str) -> str:
    """Keyed with SECRET_KEY: a stolen table cannot be searched for the codes' 50 bits."""
    message = f"recovery:{user_id}:{_normalized_recovery_code(code)}".encode()
    return hmac.new(settings.secret.encode(), message, hashlib.sha256).hexdigest()


def _new_recovery_codes(session: Session, settings: Settings, user_id: uuid.UUID) -> list[str]:
    """Ten fresh codes (`xxxxx-xxxxx`, 50 bits each) replacing any earlier ones (no commit)."""
    session.exec(update(RecoveryCode).where(col(RecoveryCode.user_id) == user_id).values(used_at=utcnow()))
    codes = []
    for _ in range(RECOVERY_CODES):
        raw = "".join(secrets.choice(RECOVERY_ALPHABET) for _ in range(10))
        codes.append(f"{raw[:5]}-{raw[5:]}")
        session.add(RecoveryCode(user_id=user_id, code_hash=_recovery_digest(settings, user_id, raw)))
    return codes


@dataclass(frozen=True)
class SecondFactor:
    """A code that was right: a TOTP step, or a recovery code; spent with the session."""

    step: int | None = None
    recovery_code_id: uuid.UUID | None = None


def _unspent_recovery_code(session: Session, settings: Settings, user: User, code: str) -> uuid.UUID | None:
    if TOTP_CODE.match(code):
        return None
    found: uuid.UUID | None = session.exec(
        select(RecoveryCode.id).where(
            col(RecoveryCode.user_id) == user.id,
            col(RecoveryCode.code_hash) == _recovery_digest(settings, user.id, code),
            col(RecoveryCode.used_at).is_(None),
        )
    ).first()
    return found


def _check_code(settings: Settings, user: User, code: str, recovery_code_id: uuid.UUID | None) -> SecondFactor | None:
    if TOTP_CODE.match(code):
        if user.totp_secret is None:
            return None
        step = matching_step(_totp(settings, user.totp_secret), code, utcnow())
        return SecondFactor(step=step) if step is not None else None
    return SecondFactor(recovery_code_id=recovery_code_id) if recovery_code_id is not None else None


def verify_code(session: Session, settings: Settings, user: User, code: str) -> SecondFactor:
    """A TOTP or recovery code of the user's, checked and throttled like a password: a wrong
    one counts toward the login lock and is audited (`auth.login_failed`, reason `otp`).
    The database is read first: between the throttle's start and end (transactions of
    their own) the request holds no connection."""
    code = code.strip()
    recovery_code_id = _unspent_recovery_code(session, settings, user, code)
    return checked_like_a_password(
        session,
        settings,
        user.email,
        user,
        lambda: _check_code(settings, user, code, recovery_code_id),
        reason="otp",
        error=invalid_code(),
    )


def spend(session: Session, settings: Settings, user_id: uuid.UUID, factor: SecondFactor) -> None:
    """In the caller's transaction (the account row locked): use the code up, or refuse
    it if another request used it first (a replayed TOTP code is refused)."""
    if factor.step is not None:
        used = session.exec(
            update(User)
            .where(
                col(User.id) == user_id,
                or_(col(User.totp_last_step).is_(None), col(User.totp_last_step) < factor.step),
            )
            .values(totp_last_step=factor.step)
            .execution_options(synchronize_session=False)
        ).rowcount
    else:
        used = session.exec(
            update(RecoveryCode)
            .where(col(RecoveryCode.id) == factor.recovery_code_id, col(RecoveryCode.used_at).is_(None))
            .values(used_at=utcnow())
        ).rowcount
    if used != 1:
        session.rollback()
        raise invalid_code()
    if factor.recovery_code_id is not None:
        user = session.get(User, user_id)
        assert user is not None
        left = recovery_codes_left(session, user_id)
        audit.record(session, settings, "mfa.recovery_code_used", actor_id=user_id, subject_id=user_id,
                     details={"codes_left": left})  # fmt: skip
        queue_mail(session, render_mail(settings, "recovery_code_used", user.email, full_name=user.full_name,
                                        codes_left=left))  # fmt: skip


def recovery_codes_left(session: Session, user_id: uuid.UUID) -> int:
    return session.exec(
        select(func.count())
        .select_from(RecoveryCode)
        .where(col(RecoveryCode.user_id) == user_id, col(RecoveryCode.used_at).is_(None))
    ).one()


# --- logging in with a second factor ----------------------------------------------------------


def challenge(session: Session, settings: Settings, check: PasswordCheck, user: User) -> AppError:
    """The answer to a right password when a second factor is on: 403 `mfa_required` with a
    short-lived, single-use `mfa_token` bound to that password check."""
    token = new_opaque_token()
    lifetime = timedelta(minutes=settings.mfa_token_minutes)
    session.add(MfaChallenge(user_id=user.id, token_hash=token_digest(token), credentials_version=check.version,
                             expires_at=utcnow() + lifetime))  # fmt: skip
    session.commit()
    detail = "A second factor is needed: send the code from your authenticator app (or a recovery code)."
    extra = {"mfa_token": token, "mfa_token_expires_in": int(lifetime.total_seconds())}
    return AppError(403, ErrorCode.MFA_REQUIRED, detail, oauth_error="mfa_required", extra=extra)


def login(session: Session, settings: Settings, check: PasswordCheck, user: User, code: str | None) -> Token:
    """The end of a password login for an account with TOTP on: with the code in the same
    request (the Swagger way, or `otp`), a session; else the `mfa_required` challenge."""
    if code is None:
        raise challenge(session, settings, check, user)
    factor = verify_code(session, settings, user, code)
    return sessions.start_session(
        session, settings, check, user, amr=AMR_SECOND_FACTOR, within=lambda s: spend(s, settings, user.id, factor)
    )


def redeem(session: Session, settings: Settings, mfa_token: str, code: str) -> Token:
    """The second step: an `mfa_token` from a right password, and a code. The session
    commits only if the password it checked is still the account's."""
    now = utcnow()
    row = session.exec(select(MfaChallenge).where(col(MfaChallenge.token_hash) == token_digest(mfa_token))).first()
    if row is None or row.used_at is not None or row.expires_at <= now:
        raise AppError(400, ErrorCode.INVALID_TOKEN, "The mfa_token is invalid or has expired; log in again.",
                       oauth_error="invalid_grant")  # fmt: skip
    user = session.get(User, row.user_id)
    if user is None or user.totp_enabled_at is None:
        raise AppError(400, ErrorCode.INVALID_TOKEN, "The mfa_token is no longer valid; log in again.",
                       oauth_error="invalid_grant")  # fmt: skip
    factor = verify_code(session, settings, user, code)
    check = PasswordCheck(user.id, user.email, row.credentials_version)  # the password step's

    def within(s: Session) -> None:
        claimed = s.exec(
            update(MfaChallenge)
            .where(col(MfaChallenge.id) == row.id, col(MfaChallenge.used_at).is_(None))
            .values(used_at=utcnow())
        ).rowcount
        if claimed != 1:
            s.rollback()
            raise AppError(400, ErrorCode.INVALID_TOKEN, "The mfa_token was already used; log in again.",
                           oauth_error="invalid_grant")  # fmt: skip
        spend(s, settings, user.id, factor)

    return sessions.start_session(session, settings, check, user, amr=AMR_SECOND_FACTOR, within=within)


# --- enrolment and management --------------------------------------------------------------


@dataclass(frozen=True)
class Enrolment:
    secret: str
    otpauth_uri: str

    def qr(self, kind: str = "svg") -> bytes:
        buffer = io.BytesIO()
        segno.make(self.otpauth_uri, error="m").save(buffer, kind=kind, scale=6, border=4)
        return buffer.getvalue()

    def qr_data_uri(self) -> str:
        return "data:image/svg+xml;base64," + base64.b64encode(self.qr("svg")).decode()


def start_enrolment(session: Session, settings: Settings, user: User, current_password: str) -> Enrolment:
    """A new secret, pending until confirmed with a code from it (a new call replaces it)."""
    if user.totp_enabled_at is not None:
        raise AppError(409, ErrorCode.CONFLICT, "Two-factor authentication is already on; turn it off first.")
    confirm_own_password(session, settings, user, current_password)
    secret = pyotp.random_base32()  # 160 bits
    user = lock_user(session, user.id)
    user.totp_pending_secret = seal(settings, SEAL_PURPOSE, secret.encode())
    session.add(user)
    session.commit()
    uri = pyotp.TOTP(secret).provisioning_uri(name=user.email, issuer_name=settings.mfa_issuer or settings.product_name)
    return Enrolment(secret, uri)


def confirm_enrolment(
    session: Session, settings: Settings, user_id: uuid.UUID, code: str, *, keep_session: uuid.UUID
) -> list[str]:
    """Turn TOTP on with a code from the pending secret; returns the recovery codes (shown
    once). Every other session ends, and a login still checking a password alone fails."""
    user = get_user(session, user_id)
    if user.totp_enabled_at is not None:
        raise AppError(409, ErrorCode.CONFLICT, "Two-factor authentication is already on.")
    if user.totp_pending_secret is None:
        raise AppError(409, ErrorCode.CONFLICT, "Start with POST /users/me/mfa/totp first.")
    pending = user.totp_pending_secret
    wrong = AppError(400, ErrorCode.INVALID_CREDENTIALS, "The code is not correct: check the clock of your device.")
    step = checked_like_a_password(  # guesses count like passwords
        session,
        settings,
        user.email,
        user,
        lambda: matching_step(_totp(settings, pending), code.strip(), utcnow()),
        reason="otp",
        error=wrong,
    )
    user = lock_user(session, user_id)
    if user.totp_pending_secret != pending or user.totp_enabled_at is not None:  # changed meanwhile
        session.rollback()
        raise AppError(409, ErrorCode.CONFLICT, "The enrolment changed meanwhile; start again.")
    user.totp_secret, user.totp_pending_secret = user.totp_pending_secret, None
    user.totp_enabled_at, user.totp_last_step = utcnow(), step
    user.credentials_version += 1
    session.add(user)
    codes = _new_recovery_codes(session, settings, user.id)
    sessions.revoke_user_sessions(session, user.id, reason="mfa_enabled", keep=keep_session)
    audit.record(session, settings, "mfa.enabled", actor_id=user.id, subject_id=user.id)
    session.commit()
    return codes


def _confirm_both(session: Session, settings: Settings, user: User, password: str, code: str) -> SecondFactor:
    """The password and a current code: what turning it off or new recovery codes ask."""
    if user.totp_enabled_at is None:
        raise AppError(409, ErrorCode.CONFLICT, "Two-factor authentication is off.")
    confirm_own_password(session, settings, user, password)
    return verify_code(session, settings, user, code)


def _turn_off(session: Session, user: User) -> None:
    user.totp_secret = user.totp_pending_secret = None
    user.totp_enabled_at = user.totp_last_step = None
    user.credentials_version += 1
    session.add(user)
    session.exec(update(RecoveryCode).where(col(RecoveryCode.user_id) == user.id).values(used_at=utcnow()))


def disable(session: Session, settings: Settings, user: User, password: str, code: str) -> None:
    """Turn TOTP off (password and a current code); the user gets a mail about it."""
    factor = _confirm_both(session, settings, user, password, code)
    user = lock_user(session, user.id)
    spend(session, settings, user.id, factor)
    _turn_off(session, user)
    audit.record(session, settings, "mfa.disabled", actor_id=user.id, subject_id=user.id)
    queue_mail(session, render_mail(settings, "mfa_disabled", user.email, full_name=user.full_name, by_admin=False))
    session.commit()


def replace_recovery_codes(session: Session, settings: Settings, user: User, password: str, code: str) -> list[str]:
    factor = _confirm_both(session, settings, user, password, code)
    lock_user(session, user.id)
    spend(session, settings, user.id, factor)
    codes = _new_recovery_codes(session, settings, user.id)
    audit.record(session, settings, "mfa.recovery_codes_replaced", actor_id=user.id, subject_id=user.id)
    session.commit()
    return codes


def admin_reset(session: Session, settings: Settings, actor: Principal, user_id: uuid.UUID) -> None:
    """DELETE /users/{id}/mfa: for someone who lost their device. Ends their sessions."""
    user = lock_user(session, user_id)
    check_can_manage(session, actor, user)
    check_not_self(actor, user, "reset your own second factor here; use DELETE /users/me/mfa/totp")
    if user.totp_enabled_at is None and user.totp_pending_secret is None:
        session.rollback()
        raise not_found("Two-factor authentication for this user")
    _turn_off(session, user)
    sessions.revoke_user_sessions(session, user.id, reason="mfa_reset")
    audit.record(session, settings, "mfa.reset_by_admin", actor_id=actor.id, subject_id=user.id)
    queue_mail(session, render_mail(settings, "mfa_disabled", user.email, full_name=user.full_name, by_admin=True))
    session.commit()


@dataclass(frozen=True)
class Status:
    enabled: bool
    enabled_at: datetime | None
    pending: bool
    recovery_codes_left: int


def status(session: Session, user: User) -> Status:
    left = recovery_codes_left(session, user.id) if user.totp_enabled_at else 0
    return Status(user.totp_enabled_at is not None, user.totp_enabled_at, user.totp_pending_secret is not None, left)
