"""Signup, the OAuth2 token endpoint, refresh, logout, sessions, introspection."""

import uuid
from operator import attrgetter
from typing import Annotated

from fastapi import APIRouter, Depends, Form, Request, Response, status

from auth_service import accounts, email_flows, sessions
from auth_service.deps import CurrentPrincipal, DbSession, SettingsDep, UnverifiedPrincipal, limit_per_ip
from auth_service.errors import AppError, ErrorCode, error_responses, not_found
from auth_service.schemas import (
    IntrospectRequest,
    IntrospectResponse,
    Message,
    PasswordResetConfirm,
    PasswordResetRequest,
    RefreshRequest,
    SessionPublic,
    SessionsPublic,
    Token,
    TokenErrorResponse,
    TokenSubmit,
    UserCreate,
    UserPublic,
)

router = APIRouter(prefix="/auth", tags=["auth"])

NO_STORE = {"Cache-Control": "no-store", "Pragma": "no-cache"}


@router.post(
    "/signup",
    status_code=status.HTTP_201_CREATED,
    response_model=UserPublic,
    responses=error_responses(403, 409, 422, 429),
    dependencies=[Depends(limit_per_ip("signup", attrgetter("signup_ip_limit")))],
)
def signup(body: UserCreate, db: DbSession, settings: SettingsDep) -> UserPublic:
    """Create an account. Refused with 403 SIGNUP_DISABLED when ALLOW_SIGNUP is false."""
    if not settings.allow_signup:
        raise AppError(403, ErrorCode.SIGNUP_DISABLED, "Signup is disabled; ask an administrator for an account.")
    user = accounts.create_user(db, settings, email=body.email, password=body.password, full_name=body.full_name)
    return accounts.public_user(db, user)


def _oauth_error(status_code: int, error: str, detail: str, code: ErrorCode = ErrorCode.VALIDATION_ERROR) -> AppError:
    return AppError(status_code, code, detail, oauth_error=error)


@router.post(
    "/login",
    response_model=Token,
    responses={
        400: {
            "model": TokenErrorResponse,
            "description": "RFC 6749 §5.2: invalid_request, invalid_grant, unsupported_grant_type.",
        },
        403: {"model": TokenErrorResponse, "description": "EMAIL_NOT_VERIFIED, when REQUIRE_VERIFIED_EMAIL is on."},
        **error_responses(429),
    },
)
def login(
    request: Request,
    response: Response,
    db: DbSession,
    settings: SettingsDep,
    grant_type: Annotated[str | None, Form(description="`password` (default) or `refresh_token`.")] = None,
    username: Annotated[str | None, Form(description="Your email.")] = None,
    password: Annotated[str | None, Form(json_schema_extra={"format": "password"})] = None,
    refresh_token: Annotated[str | None, Form(description="With grant_type=refresh_token.")] = None,
    scope: Annotated[str | None, Form(description="Accepted and ignored.")] = None,
) -> Token:
    """OAuth2 token endpoint (RFC 6749): the password grant, and the refresh_token grant (§6).

    Takes a form, as OAuth2 clients and Swagger's **Authorize** button send it.
    """
    response.headers.update(NO_STORE)
    try:
        if grant_type in (None, "", "password"):
            if not username or not password:
                raise _oauth_error(400, "invalid_request", "username and password are required.")
            check, account = accounts.authenticate(db, settings, username, password)
            return sessions.start_session(db, settings, check, account)
        if grant_type == "refresh_token":
            if not refresh_token:
                raise _oauth_error(400, "invalid_request", "refresh_token is required.")
            return sessions.rotate_refresh_token(db, settings, refresh_token)
        raise _oauth_error(400, "unsupported_grant_type", "grant_type must be password or refresh_token.")
    except AppError as exc:
        # RFC 6749 §5.2: a bad grant is a 400 at the token endpoint, not a 401.
        if exc.status_code == 401:
            exc.status_code, exc.headers = 400, None
        exc.headers = {**(exc.headers or {}), **NO_STORE}
        raise


@router.post("/refresh", response_model=Token, responses=error_responses(401, 403, 422))
def refresh(body: RefreshRequest, response: Response, db: DbSession, settings: SettingsDep) -> Token:
    """Trade a refresh token for a new pair. Each refresh token works once: a replay ends the session."""
    response.headers.update(NO_STORE)
    return sessions.rotate_refresh_token(db, settings, body.refresh_token)


@router.post("/logout", status_code=status.HTTP_204_NO_CONTENT, responses=error_responses(401))
def logout(principal: UnverifiedPrincipal, db: DbSession, settings: SettingsDep) -> None:
    """End this session: its access and refresh tokens stop working at once."""
    sessions.logout(db, settings, principal)


@router.post("/logout-all", status_code=status.HTTP_204_NO_CONTENT, responses=error_responses(401))
def logout_all(principal: UnverifiedPrincipal, db: DbSession, settings: SettingsDep) -> None:
    """End every session of this user, this one included."""
    sessions.logout(db, settings, principal, everywhere=True)


@router.get("/sessions", response_model=SessionsPublic, responses=error_responses(401))
def list_sessions(principal: CurrentPrincipal, db: DbSession) -> SessionsPublic:
    """Your live sessions, newest first; `current` marks the one making this call."""
    rows = sessions.live_sessions(db, principal.user.id)
    data = [SessionPublic.model_validate(s, update={"current": s.id == principal.session_id}) for s in rows]
    return SessionsPublic(data=data, count=len(data))


@router.delete("/sessions/{session_id}", status_code=status.HTTP_204_NO_CONTENT, responses=error_responses(401, 404))
def delete_session(session_id: uuid.UUID, principal: CurrentPrincipal, db: DbSession, settings: SettingsDep) -> None:
    """End one of your sessions (someone else's is a 404)."""
    if not sessions.end_own_session(db, settings, principal, session_id):
        raise not_found("Session")


@router.post(
    "/introspect",
    response_model=IntrospectResponse,
    response_model_exclude_none=True,
    responses=error_responses(422, 429),
    dependencies=[Depends(limit_per_ip("introspect", attrgetter("introspect_ip_limit")))],
)
def introspect(body: IntrospectRequest, db: DbSession, settings: SettingsDep) -> IntrospectResponse:
    """RFC 7662: `{"active": false}` for anything not a live access token; its claims otherwise."""
    return sessions.introspect(db, settings, body.token)


@router.post(
    "/verify-email/request",
    status_code=status.HTTP_202_ACCEPTED,
    response_model=Message,
    responses=error_responses(401, 403, 429),
    dependencies=[Depends(limit_per_ip("mail", attrgetter("mail_ip_limit")))],
)
def request_verification(principal: UnverifiedPrincipal, db: DbSession, settings: SettingsDep) -> Message:
    """Mail a new verification link to your address (older links stop working)."""
    if principal.user.is_verified:
        return Message(detail="Your email address is already verified.")
    email_flows.mail_budget(db, settings, principal.user.email)
    email_flows.queue_verification(db, settings, principal.user)
    db.commit()
    return Message(detail="A verification link is on its way.")


@router.post("/verify-email", response_model=UserPublic, responses=error_responses(400, 422))
def verify_email(body: TokenSubmit, db: DbSession, settings: SettingsDep) -> UserPublic:
    """Confirm an email address with the token from the mail. 400 INVALID_TOKEN or TOKEN_EXPIRED."""
    return accounts.public_user(db, email_flows.verify_email(db, settings, body.token))


RESET_REQUESTED = "If an account uses this email, a reset link is on its way."


@router.post(
    "/password-reset/request",
    status_code=status.HTTP_202_ACCEPTED,
    response_model=Message,
    responses=error_responses(422, 429),
    dependencies=[Depends(limit_per_ip("mail", attrgetter("mail_ip_limit")))],
)
def request_password_reset(body: PasswordResetRequest, db: DbSession, settings: SettingsDep) -> Message:
    """Always 202 with the same answer, whether or not the email has an account."""
    email_flows.request_password_reset(db, settings, body.email)
    db.commit()
    return Message(detail=RESET_REQUESTED)


@router.post("/password-reset/confirm", response_model=Message, responses=error_responses(400, 422))
def confirm_password_reset(body: PasswordResetConfirm, db: DbSession, settings: SettingsDep) -> Message:
    """Set a new password with the token from the mail; every session of the account ends."""
    email_flows.reset_password(db, settings, body.token, body.new_password)
    return Message(detail="Your password has been reset; log in with the new one.")
