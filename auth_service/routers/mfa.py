"""Two-factor authentication: enrol, confirm, turn off, new recovery codes (/users/me/mfa),
and an administrator's reset (/users/{id}/mfa)."""

import uuid
from typing import Annotated

from fastapi import APIRouter, Depends, Request, Response, status

from auth_service import accounts, mfa
from auth_service.deps import DbSession, EnrollingPrincipal, SettingsDep, require_permission
from auth_service.errors import error_responses
from auth_service.permissions import USERS_WRITE
from auth_service.principals import Principal
from auth_service.schemas import MfaCode, MfaConfirm, MfaEnrol, MfaEnrolment, MfaStatus, RecoveryCodes

router = APIRouter(tags=["two-factor"])

QR_IMAGES = {"image/png": "png", "image/svg+xml": "svg"}


@router.get("/users/me/mfa", response_model=MfaStatus, responses=error_responses(401, 403))
def read_status(principal: EnrollingPrincipal, db: DbSession) -> MfaStatus:
    """Whether your second factor is on, and how many recovery codes are left."""
    found = mfa.status(db, accounts.get_user(db, principal.id))
    return MfaStatus(
        enabled=found.enabled,
        enabled_at=found.enabled_at,
        pending=found.pending,
        recovery_codes_left=found.recovery_codes_left,
    )


@router.post(
    "/users/me/mfa/totp",
    response_model=MfaEnrolment,
    responses={
        200: {"content": {"image/png": {}, "image/svg+xml": {}}, "description": "The secret, or just its QR code."},
        **error_responses(400, 401, 403, 409, 422, 429),
    },
)
def start_enrolment(
    body: MfaEnrol, request: Request, principal: EnrollingPrincipal, db: DbSession, settings: SettingsDep
) -> MfaEnrolment | Response:
    """Start turning on TOTP: add the secret to an authenticator app, then confirm with a
    code (`POST /users/me/mfa/totp/confirm`). Needs your password (a wrong one counts like a
    failed login). Ask for `image/png` (Swagger: the media type above) to see the QR code."""
    enrolment = mfa.start_enrolment(db, settings, accounts.get_user(db, principal.id), body.current_password)
    accept = request.headers.get("accept", "")
    for media_type, kind in QR_IMAGES.items():
        if media_type in accept and "application/json" not in accept:
            return Response(enrolment.qr(kind), media_type=media_type, headers={"Cache-Control": "no-store"})
    return MfaEnrolment(secret=enrolment.secret, otpauth_uri=enrolment.otpauth_uri, qr_code=enrolment.qr_data_uri())


@router.post(
    "/users/me/mfa/totp/confirm", response_model=RecoveryCodes, responses=error_responses(400, 401, 403, 409, 422)
)
def confirm_enrolment(
    body: MfaCode, principal: EnrollingPrincipal, db: DbSession, settings: SettingsDep
) -> RecoveryCodes:
    """Turn TOTP on with a code from the app. Answers 10 recovery codes, shown only now.
    Your other sessions end; this one goes on."""
    codes = mfa.confirm_enrolment(db, settings, principal.id, body.code, keep_session=principal.session_id)
    return RecoveryCodes(recovery_codes=codes)


@router.delete(
    "/users/me/mfa/totp",
    status_code=status.HTTP_204_NO_CONTENT,
    responses=error_responses(400, 401, 403, 409, 422, 429),
)
def disable(body: MfaConfirm, principal: EnrollingPrincipal, db: DbSession, settings: SettingsDep) -> None:
    """Turn TOTP off, with your password and a current code. A mail tells you it happened."""
    mfa.disable(db, settings, accounts.get_user(db, principal.id), body.password, body.code)


@router.post(
    "/users/me/mfa/recovery-codes",
    response_model=RecoveryCodes,
    responses=error_responses(400, 401, 403, 409, 422, 429),
)
def replace_recovery_codes(
    body: MfaConfirm, principal: EnrollingPrincipal, db: DbSession, settings: SettingsDep
) -> RecoveryCodes:
    """Ten new recovery codes (password and a current code); the old ones stop working."""
    user = accounts.get_user(db, principal.id)
    return RecoveryCodes(recovery_codes=mfa.replace_recovery_codes(db, settings, user, body.password, body.code))


@router.delete(
    "/users/{user_id}/mfa", status_code=status.HTTP_204_NO_CONTENT, responses=error_responses(401, 403, 404, 422)
)
def reset(
    user_id: uuid.UUID,
    principal: Annotated[Principal, Depends(require_permission(USERS_WRITE))],
    db: DbSession,
    settings: SettingsDep,
) -> None:
    """Turn off someone's second factor (they lost their device), if you hold every
    permission they hold. Their sessions end; they get a mail."""
    mfa.admin_reset(db, settings, principal, user_id)
