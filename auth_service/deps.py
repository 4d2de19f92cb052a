"""Request dependencies: settings, database session, the caller, permission checks."""

import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Annotated

from fastapi import Depends, Query, Request
from fastapi.security import OAuth2PasswordBearer
from sqlmodel import Session

from auth_service import throttle
from auth_service.config import Limit, Settings
from auth_service.db import new_session
from auth_service.errors import BEARER, BEARER_INVALID, AppError, ErrorCode, email_not_verified, permission_denied
from auth_service.models import User
from auth_service.security import TokenExpired, TokenInvalid, decode_access_token
from auth_service.sessions import Principal, load_principal

oauth2_scheme = OAuth2PasswordBearer(
    tokenUrl="/auth/login", auto_error=False, description="Log in with your email as the username."
)


def get_settings(request: Request) -> Settings:
    settings: Settings = request.app.state.settings
    return settings


def get_db(request: Request) -> Iterator[Session]:
    with new_session(request.app.state.engine) as session:
        yield session


SettingsDep = Annotated[Settings, Depends(get_settings)]
DbSession = Annotated[Session, Depends(get_db)]


def _authenticate(token: str | None, db: Session, settings: Settings) -> Principal:
    """Verify the bearer token, then, in one query, that its user and session are live."""
    if not token:
        raise AppError(401, ErrorCode.NOT_AUTHENTICATED, "Not authenticated.", headers=BEARER)
    try:
        claims = decode_access_token(settings, token)
    except TokenExpired:
        raise AppError(401, ErrorCode.TOKEN_EXPIRED, "The access token has expired.", headers=BEARER_INVALID) from None
    except TokenInvalid:
        raise AppError(401, ErrorCode.INVALID_TOKEN, "The access token is invalid.", headers=BEARER_INVALID) from None
    principal = load_principal(db, uuid.UUID(claims["sub"]), uuid.UUID(claims["sid"]))
    if principal is None:
        raise AppError(401, ErrorCode.INVALID_TOKEN, "The session has ended; log in again.", headers=BEARER_INVALID)
    if not principal.user.is_active:
        raise AppError(403, ErrorCode.INACTIVE_USER, "This account is deactivated.")
    return principal


def get_principal(
    token: Annotated[str | None, Depends(oauth2_scheme)], db: DbSession, settings: SettingsDep
) -> Principal:
    """The caller, if their token, session and account are live, and (with
    REQUIRE_VERIFIED_EMAIL) their address verified."""
    principal = _authenticate(token, db, settings)
    if settings.require_verified_email and not principal.user.is_verified:
        raise email_not_verified()
    return principal


def get_unverified_principal(
    token: Annotated[str | None, Depends(oauth2_scheme)], db: DbSession, settings: SettingsDep
) -> Principal:
    """The caller, verified address or not: for the few calls an unverified account needs
    even under REQUIRE_VERIFIED_EMAIL (asking for a new verification mail, logging out)."""
    return _authenticate(token, db, settings)


CurrentPrincipal = Annotated[Principal, Depends(get_principal)]
UnverifiedPrincipal = Annotated[Principal, Depends(get_unverified_principal)]


def get_current_user(principal: CurrentPrincipal) -> User:
    return principal.user


CurrentUser = Annotated[User, Depends(get_current_user)]


def require_permission(*permissions: str) -> Callable[[Principal], Principal]:
    """A dependency that lets the call through only if the caller holds every permission."""

    def check(principal: CurrentPrincipal) -> Principal:
        missing = [p for p in permissions if not principal.can(p)]
        if missing:
            raise permission_denied(f"This requires the permission {', '.join(missing)}.")
        return principal

    return check


def limit_per_ip(name: str, limit_of: Callable[[Settings], Limit | None]) -> Callable[[Request, Settings], None]:
    """A dependency counting calls per client IP under `name`: 429 RATE_LIMITED past the limit."""

    def check(request: Request, settings: SettingsDep) -> None:
        ip = request.client.host if request.client else "unknown"
        throttle.enforce(request.app.state.engine, f"{name}-ip:{ip}", limit_of(settings))

    return check


MAX_OFFSET = 2**31 - 1  # past it PostgreSQL's bigint, or SQLite's integer, would overflow


@dataclass(frozen=True)
class Page:
    offset: int
    limit: int


def page(
    offset: Annotated[int, Query(ge=0, le=MAX_OFFSET)] = 0,
    limit: Annotated[int, Query(ge=1, le=200)] = 50,
) -> Page:
    """The list parameters every listing takes: `offset`, and `limit` (default 50, max 200)."""
    return Page(offset, limit)


PageDep = Annotated[Page, Depends(page)]


def require_role(*roles: str) -> Callable[[Principal], Principal]:
    """A dependency that lets the call through only if the caller holds every role (superusers pass)."""

    def check(principal: CurrentPrincipal) -> Principal:
        missing = [r for r in roles if r not in principal.roles]
        if missing and not principal.user.is_superuser:
            raise permission_denied(f"This requires the role {', '.join(missing)}.")
        return principal

    return check
