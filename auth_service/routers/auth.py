"""Signup, the OAuth2 token endpoint, refresh, logout, sessions, introspection."""

import uuid
from operator import attrgetter
from typing import Annotated

from fastapi import APIRouter, Depends, Form, Request, Response, status
from fastapi.exceptions import RequestValidationError
from pydantic import ValidationError
from sqlmodel import Session

from auth_service import accounts, clients, email_flows, mfa, sessions
from auth_service.deps import (
    DbSession,
    SettingsDep,
    UnverifiedPrincipal,
    UserPrincipal,
    admit_to_the_hash_queue,
    limit_per_ip,
)
from auth_service.errors import AppError, ErrorCode, error_responses, not_found
from auth_service.models import Client
from auth_service.schemas import (
    IntrospectResponse,
    Message,
    PasswordResetConfirm,
    PasswordResetRequest,
    RefreshRequest,
    SessionPublic,
    SessionsPublic,
    Token,
    TokenErrorResponse,
    TokenForm,
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


GRANT_TYPES = ("password", "refresh_token", "client_credentials", mfa.MFA_GRANT)


@router.post(
    "/login",
    response_model=Token,
    response_model_exclude_none=True,
    responses={
        400: {
            "model": TokenErrorResponse,
            "description": "RFC 6749 §5.2: invalid_request, invalid_grant, invalid_client (credentials in the "
            "form), invalid_scope, unsupported_grant_type.",
        },
        401: {"model": TokenErrorResponse, "description": "invalid_client, with HTTP Basic credentials."},
        403: {
            "model": TokenErrorResponse,
            "description": "MFA_REQUIRED (`error: mfa_required`, with an `mfa_token`) for an account with two-factor "
            "on; EMAIL_NOT_VERIFIED when REQUIRE_VERIFIED_EMAIL is on.",
        },
        **error_responses(429),
    },
    dependencies=[Depends(admit_to_the_hash_queue)],
)
def login(
    request: Request,
    response: Response,
    db: DbSession,
    settings: SettingsDep,
    grant_type: Annotated[
        str | None, Form(description=f"`password` (default), `refresh_token`, `client_credentials`, `{mfa.MFA_GRANT}`.")
    ] = None,
    username: Annotated[str | None, Form(description="Your email.")] = None,
    password: Annotated[str | None, Form(json_schema_extra={"format": "password"})] = None,
    refresh_token: Annotated[str | None, Form(description="With grant_type=refresh_token.")] = None,
    scope: Annotated[
        str | None, Form(description="Client credentials: some of the client's permissions. Else ignored.")
    ] = None,
    client_id: Annotated[str | None, Form(description="Client credentials, if not sent with HTTP Basic.")] = None,
    client_secret: Annotated[
        str | None,
        Form(
            description="Client credentials, if not sent with HTTP Basic. With the password grant: your "
            "two-factor code (Swagger's Authorize dialog: leave client_id empty).",
            json_schema_extra={"format": "password"},
        ),
    ] = None,
    otp: Annotated[str | None, Form(description="A two-factor code: TOTP or a recovery code.")] = None,
    mfa_token: Annotated[str | None, Form(description=f"With grant_type={mfa.MFA_GRANT}.")] = None,
) -> Token:
    """OAuth2 token endpoint (RFC 6749): the password grant, the refresh_token grant (§6),
    client credentials (§4.4) for service clients, and the second step of a two-factor login.

    Takes a form, as OAuth2 clients and Swagger's **Authorize** button send it. With
    two-factor on, a right password alone answers 403 `mfa_required` with an `mfa_token`;
    send it back with `grant_type=urn:auth_service:params:oauth:grant-type:mfa-otp` and
    `otp`. Or send the code with the password: in `otp`, or in `client_secret` (what
    Swagger's Authorize dialog has: put the code there, leave client_id empty).
    """
    response.headers.update(NO_STORE)
    try:
        if grant_type in (None, "", "password"):
            if not username or not password:
                raise _oauth_error(400, "invalid_request", "username and password are required.")
            check, user = accounts.authenticate(db, settings, username, password)
            if user.totp_enabled_at is not None:
                code = otp or _code_in_client_secret(request, client_id, client_secret)
                return mfa.login(db, settings, check, user, code)
            return sessions.start_session(db, settings, check, user)
        if grant_type == "refresh_token":
            if not refresh_token:
                raise _oauth_error(400, "invalid_request", "refresh_token is required.")
            return sessions.rotate_refresh_token(db, settings, refresh_token)
        if grant_type == mfa.MFA_GRANT:
            if not mfa_token or not otp:
                raise _oauth_error(400, "invalid_request", "mfa_token and otp are required.")
            return mfa.redeem(db, settings, mfa_token, otp)
        if grant_type == "client_credentials":
            client = _authenticated_client(request, db, client_id, client_secret, required=True)
            assert client is not None
            return clients.issue_token(db, settings, client, scope)
        raise _oauth_error(400, "unsupported_grant_type", f"grant_type must be one of {', '.join(GRANT_TYPES)}.")
    except AppError as exc:
        # RFC 6749 §5.2: a bad grant is a 400 at the token endpoint, not a 401 (a bad
        # client authenticated with HTTP Basic stays 401, with its challenge).
        if exc.status_code == 401 and exc.oauth_error != "invalid_client":
            exc.status_code, exc.headers = 400, None
        exc.headers = {**(exc.headers or {}), **NO_STORE}
        raise


def _code_in_client_secret(request: Request, client_id: str | None, client_secret: str | None) -> str | None:
    """Swagger's Authorize dialog has no field for a code, only client_id and client_secret,
    which it sends in the form or as HTTP Basic (`:code`). With client_id empty, the
    password grant has no client to authenticate, so that secret can only be the code; a
    real client's credentials (client_id given) are never taken for one."""
    if client_secret and not client_id:
        return client_secret
    basic = clients.basic_credentials(request.headers.get("authorization"))
    return basic[1] if basic and not basic[0] and basic[1] else None


def _authenticated_client(
    request: Request, db: Session, client_id: str | None, client_secret: str | None, *, required: bool
) -> Client | None:
    """The service client of HTTP Basic or form credentials (RFC 6749 §2.3.1). Credentials
    that do not check out, a malformed Basic header among them, are always refused
    (invalid_client); none at all only if `required`."""
    authorization = request.headers.get("authorization")
    basic = clients.basic_credentials(authorization)
    if basic is None and clients.sends_basic(authorization):
        raise clients.invalid_client()
    credentials = basic or ((client_id, client_secret or "") if client_id else None)
    if credentials is None:
        if required:
            raise clients.invalid_client()
        return None
    client = clients.authenticate(db, *credentials)
    if client is None:
        raise clients.invalid_client(basic=basic is not None or not required)
    return client


@router.post(
    "/refresh", response_model=Token, response_model_exclude_none=True, responses=error_responses(401, 403, 422)
)
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
def list_sessions(principal: UserPrincipal, db: DbSession) -> SessionsPublic:
    """Your live sessions, newest first; `current` marks the one making this call."""
    rows = sessions.live_sessions(db, principal.id)
    data = [SessionPublic.model_validate(s, update={"current": s.id == principal.session_id}) for s in rows]
    return SessionsPublic(data=data, count=len(data))


@router.delete("/sessions/{session_id}", status_code=status.HTTP_204_NO_CONTENT, responses=error_responses(401, 404))
def delete_session(session_id: uuid.UUID, principal: UserPrincipal, db: DbSession, settings: SettingsDep) -> None:
    """End one of your sessions (someone else's is a 404)."""
    if not sessions.end_own_session(db, settings, principal, session_id):
        raise not_found("Session")


# Inline, not a $ref: the body is read by a dependency, so FastAPI never adds TokenForm to the components.
TOKEN_BODY = {
    "requestBody": {
        "required": True,
        "content": {
            "application/x-www-form-urlencoded": {"schema": TokenForm.model_json_schema()},
            "application/json": {"schema": TokenForm.model_json_schema()},
        },
    }
}


async def token_form(request: Request) -> TokenForm:
    """RFC 7662 and RFC 7009 clients post a form; a JSON object works too."""
    try:
        if request.headers.get("content-type", "").startswith("application/json"):
            body = await request.json()
        else:
            body = dict(await request.form())
        return TokenForm.model_validate(body)
    except ValidationError as exc:
        raise RequestValidationError(exc.errors()) from None
    except (ValueError, RecursionError):  # not JSON, or nested past the parser's depth
        raise AppError(422, ErrorCode.VALIDATION_ERROR, "The body must be a form or a JSON object.") from None


TokenFormDep = Annotated[TokenForm, Depends(token_form)]


@router.post(
    "/introspect",
    response_model=IntrospectResponse,
    response_model_exclude_none=True,
    responses=error_responses(401, 422, 429),
    dependencies=[Depends(limit_per_ip("introspect", attrgetter("introspect_ip_limit")))],
    openapi_extra=TOKEN_BODY,
)
def introspect(request: Request, body: TokenFormDep, db: DbSession, settings: SettingsDep) -> IntrospectResponse:
    """RFC 7662, for services: authenticate as a client (HTTP Basic, or `client_id` and
    `client_secret` in the form), send `token`. `{"active": false}` for anything not a live
    access token; its claims otherwise. INTROSPECTION_REQUIRES_CLIENT=false opens it to anyone."""
    required = settings.introspection_requires_client
    _authenticated_client(request, db, body.client_id, body.client_secret, required=required)
    return sessions.introspect(db, settings, body.token)


@router.post(
    "/revoke",
    response_class=Response,
    responses={200: {"description": "Revoked, or nothing to revoke: an empty body."}, **error_responses(401, 422, 429)},
    dependencies=[Depends(limit_per_ip("revoke", attrgetter("introspect_ip_limit")))],
    openapi_extra=TOKEN_BODY,
)
def revoke(request: Request, body: TokenFormDep, db: DbSession, settings: SettingsDep) -> Response:
    """RFC 7009: send a refresh token (or a user's access token) as `token`; its session
    ends. Always 200, whatever the token was. Holding the token is proof enough; client
    credentials, if sent, must be right."""
    _authenticated_client(request, db, body.client_id, body.client_secret, required=False)
    sessions.revoke_token(db, settings, body.token)
    return Response(status_code=200, headers=NO_STORE)


@router.post(
    "/verify-email/request",
    status_code=status.HTTP_202_ACCEPTED,
    response_model=Message,
    responses=error_responses(401, 403, 429),
    dependencies=[Depends(limit_per_ip("mail", attrgetter("mail_ip_limit")))],
)
def request_verification(principal: UnverifiedPrincipal, db: DbSession, settings: SettingsDep) -> Message:
    """Mail a new verification link to your address (older links stop working)."""
    user = accounts.get_user(db, principal.id)
    if user.is_verified:
        return Message(detail="Your email address is already verified.")
    email_flows.mail_budget(db, settings, user.email)
    email_flows.queue_verification(db, settings, user)
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
