"""Request dependencies: settings, database session, the caller, permission checks."""

from collections.abc import AsyncIterator, Callable, Coroutine
from dataclasses import dataclass
from typing import Annotated, Any

from fastapi import Depends, Query, Request
from fastapi.concurrency import run_in_threadpool
from fastapi.security import OAuth2PasswordBearer
from sqlmodel import Session

from auth_service import principals, throttle
from auth_service.config import Limit, Settings
from auth_service.db import new_session
from auth_service.errors import AppError, ErrorCode, email_not_verified, permission_denied
from auth_service.principals import Principal
from auth_service.security import place_in_the_hash_queue
from auth_service.sessions import needs_enrolment

oauth2_scheme = OAuth2PasswordBearer(
    tokenUrl="/auth/login",
    auto_error=False,
    description="Log in with your email as the username. With two-factor authentication on, put the 6-digit "
    "code from your authenticator app (or a recovery code) in **client_secret**, and leave client_id empty.",
)


async def get_settings(request: Request) -> Settings:
    settings: Settings = request.app.state.settings
    return settings


async def get_db(request: Request) -> AsyncIterator[Session]:
    """A session for the request. Made on the event loop (it costs nothing until it first
    queries), so a sync endpoint takes one trip to the thread pool, not three; closed here
    too unless it still holds a transaction, whose rollback is I/O for the thread pool."""
    session = new_session(request.app.state.engine)
    try:
        yield session
    finally:
        if session.in_transaction():
            await run_in_threadpool(session.close)
        else:
            session.close()


SettingsDep = Annotated[Settings, Depends(get_settings)]
DbSession = Annotated[Session, Depends(get_db)]
Token = Annotated[str | None, Depends(oauth2_scheme)]


async def _authenticate(
    request: Request, token: str | None, *, users_only: bool, unverified_ok: bool = False, enrolling_ok: bool = False
) -> Principal:
    """The token checked and its principal loaded in one trip to the thread pool (the only
    blocking work of an authenticated request that needs nothing else), then the policies:
    a verified address (REQUIRE_VERIFIED_EMAIL), a second factor for superusers
    (MFA_REQUIRED_FOR_SUPERUSERS), a user rather than a service client."""
    state = request.app.state
    principal: Principal
    if state.reads is not None:  # PostgreSQL: the read stays on the event loop
        principal = await principals.authenticate_async(state.engine, state.reads, state.settings, token)
    else:
        principal = await run_in_threadpool(principals.authenticate, state.engine, state.settings, token)
    account = principal.account
    if account is None:
        if users_only:
            raise permission_denied("This is for users; a service client has no account here.")
        return principal
    if not unverified_ok and state.settings.require_verified_email and not account.is_verified:
        raise email_not_verified()
    if not enrolling_ok and needs_enrolment(state.settings, principal):
        detail = "Turn on two-factor authentication first (POST /users/me/mfa/totp): superusers need it here."
        raise AppError(403, ErrorCode.MFA_ENROLLMENT_REQUIRED, detail)
    return principal


async def get_principal(request: Request, token: Token) -> Principal:
    """The caller, user or service client, if their token and what it names are live."""
    return await _authenticate(request, token, users_only=False)


async def get_user_principal(request: Request, token: Token) -> Principal:
    """A user, not a service client: for the calls about one's own account."""
    return await _authenticate(request, token, users_only=True)


async def get_enrolling_principal(request: Request, token: Token) -> Principal:
    """A user who may still have to turn on a second factor: for /users/me and enrolment."""
    return await _authenticate(request, token, users_only=True, enrolling_ok=True)


async def get_unverified_user_principal(request: Request, token: Token) -> Principal:
    """A user, verified address or not: for the few calls an unverified account needs even
    under REQUIRE_VERIFIED_EMAIL (asking for a new verification mail, logging out)."""
    return await _authenticate(request, token, users_only=True, unverified_ok=True, enrolling_ok=True)


CurrentPrincipal = Annotated[Principal, Depends(get_principal)]
UserPrincipal = Annotated[Principal, Depends(get_user_principal)]
EnrollingPrincipal = Annotated[Principal, Depends(get_enrolling_principal)]
UnverifiedPrincipal = Annotated[Principal, Depends(get_unverified_user_principal)]


def require_permission(
    *permissions: str, second_factor: bool = False
) -> Callable[[Principal], Coroutine[Any, Any, Principal]]:
    """A dependency that lets the call through only if the caller holds every permission
    and, with `second_factor`, logged in with one (`amr` has `otp`) if they are a user."""

    async def check(principal: CurrentPrincipal) -> Principal:
        missing = [p for p in permissions if not principal.can(p)]
        if missing:
            raise permission_denied(f"This requires the permission {', '.join(missing)}.")
        if second_factor and principal.account is not None and "otp" not in principal.amr:
            raise AppError(403, ErrorCode.MFA_REQUIRED, "This needs a session logged in with a second factor.")
        return principal

    return check


async def admit_to_the_hash_queue(request: Request) -> AsyncIterator[None]:
    """A password login takes its place in the hash queue here, on the event loop, before a
    thread, a query or a transaction is spent on it: past HASH_QUEUE_LIMIT it gets its 503
    at once, and a login let in is never turned away later."""
    form = await request.form()
    if form.get("grant_type") not in (None, "", "password"):
        yield
        return
    with place_in_the_hash_queue(request.app.state.settings):
        yield


def count_per_ip(request: Request, name: str, limit: Limit | None) -> None:
    """Count a call per client IP under `name`: 429 RATE_LIMITED past the limit."""
    ip = request.client.host if request.client else "unknown"
    throttle.enforce(request.app.state.engine, f"{name}-ip:{ip}", limit)


def limit_per_ip(name: str, limit_of: Callable[[Settings], Limit | None]) -> Callable[[Request, Settings], None]:
    """A dependency: count_per_ip with the limit a setting names."""

    def check(request: Request, settings: SettingsDep) -> None:
        count_per_ip(request, name, limit_of(settings))

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


def require_role(*roles: str) -> Callable[[Principal], Coroutine[Any, Any, Principal]]:
    """A dependency that lets the call through only if the caller holds every role (superusers pass)."""

    async def check(principal: CurrentPrincipal) -> Principal:
        missing = [r for r in roles if r not in principal.roles]
        if missing and not principal.is_superuser:
            raise permission_denied(f"This requires the role {', '.join(missing)}.")
        return principal

    return check
