"""Who is calling: a bearer token verified, and, in one query, that what it names is live.

A token names either a user's session (`sub` the user, `sid` the session) or a service
client (`sub` and `client_id` the client, `sid` its secret's generation). Either way one
query checks that the user is active and the session not revoked (or that the client is
active and its secret unchanged), and, with ES256/RS256, that the key that signed it has
not been retired: logout, a password change, deactivation or a deleted client cut access
on the very next request, on every worker.
"""

import re
import uuid
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from jose import JOSEError, jwt
from sqlalchemy import Connection, Engine, Select, bindparam, exists, select
from sqlalchemy.dialects import postgresql
from sqlalchemy.exc import DBAPIError
from starlette.concurrency import run_in_threadpool

from auth_service.async_reads import AsyncReads
from auth_service.config import Settings
from auth_service.errors import BEARER, BEARER_INVALID, AppError, ErrorCode
from auth_service.models import Client, Role, SigningKey, User, UserRole, UserSession, UTCDateTime, utcnow
from auth_service.permissions import BUILTIN_PERMISSIONS
from auth_service.security import ASYMMETRIC, TokenExpired, TokenInvalid, decode_access_token
from auth_service.signing_keys import is_cached, public_key, usable

users = User.__table__  # type: ignore[attr-defined]
user_sessions = UserSession.__table__  # type: ignore[attr-defined]
user_roles = UserRole.__table__  # type: ignore[attr-defined]
roles = Role.__table__  # type: ignore[attr-defined]
clients = Client.__table__  # type: ignore[attr-defined]
signing_keys = SigningKey.__table__  # type: ignore[attr-defined]


@dataclass(frozen=True, slots=True)
class Account:
    """A user as the API shows them: never the hash."""

    id: uuid.UUID
    email: str
    full_name: str | None
    is_active: bool
    is_verified: bool
    is_superuser: bool
    created_at: datetime
    last_login_at: datetime | None
    mfa_enabled: bool


ACCOUNT_COLUMNS = (
    *(users.c[name] for name in Account.__slots__ if name != "mfa_enabled"),
    users.c.totp_enabled_at.is_not(None).label("mfa_enabled"),
)


@dataclass(frozen=True, slots=True)
class Principal:
    """The caller: a user on one of their sessions, or a service client."""

    id: uuid.UUID  # the user's id, or the client's (the audit log's actor_id)
    session_id: uuid.UUID  # the user's session, or the client's secret generation
    roles: list[str]
    permissions: frozenset[str]
    account: Account | None = None  # None for a service client
    client_id: str | None = None
    amr: tuple[str, ...] = ()  # how the user logged in (RFC 8176): ("pwd",) or ("pwd", "otp")

    @property
    def is_superuser(self) -> bool:
        return self.account is not None and self.account.is_superuser

    def can(self, permission: str) -> bool:
        return self.is_superuser or permission in self.permissions


def effective_permissions(is_superuser: bool, role_permissions: set[str]) -> frozenset[str]:
    return frozenset(BUILTIN_PERMISSIONS) | role_permissions if is_superuser else frozenset(role_permissions)


def _key_is_live(kid: str | None, now: datetime) -> list[Any]:
    """With ES256/RS256, the signing key must not have been retired since."""
    if kid is None:
        return []
    return [exists().where(signing_keys.c.kid == kid, usable(now))]


def _user_query(with_kid: bool) -> Select[Any]:
    """The one query of an authenticated request: the user, their session's `amr`, their
    roles, if the session is live (and, with ES256/RS256, the token's key not retired)."""
    now = bindparam("now", type_=UTCDateTime())
    conditions = [
        users.c.id == bindparam("user_id"),
        user_sessions.c.id == bindparam("session_id"),
        user_sessions.c.revoked_at.is_(None),
        user_sessions.c.expires_at > now,
    ]
    if with_kid:
        conditions.append(exists().where(signing_keys.c.kid == bindparam("kid"), usable(now)))
    return (
        select(*ACCOUNT_COLUMNS, user_sessions.c.amr, roles.c.name, roles.c.permissions)
        .select_from(
            users.join(user_sessions, user_sessions.c.user_id == users.c.id)
            .outerjoin(user_roles, user_roles.c.user_id == users.c.id)
            .outerjoin(roles, roles.c.id == user_roles.c.role_id)
        )
        .where(*conditions)
    )


USER_QUERIES = {with_kid: _user_query(with_kid) for with_kid in (True, False)}


@dataclass(frozen=True)
class Prepared:
    """One of USER_QUERIES for the driver itself. The non-blocking read of every request runs
    it as a prepared statement (PostgreSQL then plans the join once per connection, not on
    every request: most of its cost), unless DATABASE_PREPARED_STATEMENTS is off. The
    blocking path (login, refresh, introspection: a hash or a write beside it) runs `sql`
    plain, so a migration that changes a column type cannot break its pooled connections."""

    name: str
    prepare: str
    execute: str
    sql: str


def _prepared(with_kid: bool) -> Prepared:
    sql = str(USER_QUERIES[with_kid].compile(dialect=postgresql.psycopg2.dialect()))  # type: ignore[no-untyped-call]
    names: list[str] = []

    def numbered(match: re.Match[str]) -> str:
        if match.group(1) not in names:
            names.append(match.group(1))
        return f"${names.index(match.group(1)) + 1}"

    body = re.sub(r"%\((\w+)\)s", numbered, sql)
    name = f"auth_principal_{'kid' if with_kid else 'hs'}"
    execute = f"EXECUTE {name}({', '.join(f'%({n})s' for n in names)})"
    return Prepared(name, f"PREPARE {name} AS {body}", execute, sql)


PREPARED = {with_kid: _prepared(with_kid) for with_kid in (True, False)}


def _driver_values(params: dict[str, Any]) -> dict[str, Any]:
    return {key: str(value) if isinstance(value, uuid.UUID) else value for key, value in params.items()}


def _user_rows(connection: Connection, params: dict[str, Any], with_kid: bool) -> list[tuple[Any, ...]]:
    if connection.dialect.name != "postgresql":
        return [tuple(row) for row in connection.execute(USER_QUERIES[with_kid], params)]
    statement, values = PREPARED[with_kid], _driver_values(params)
    return [_as_python(tuple(row)) for row in connection.exec_driver_sql(statement.sql, values)]


ID_COLUMN = Account.__slots__.index("id")
TIME_COLUMNS = tuple(Account.__slots__.index(name) for name in ("created_at", "last_login_at"))


def _as_python(row: tuple[Any, ...]) -> tuple[Any, ...]:
    """What SQLAlchemy's types would have made of a raw psycopg2 row: UUIDs, UTC times."""
    values = list(row)
    found = values[ID_COLUMN]
    values[ID_COLUMN] = found if isinstance(found, uuid.UUID) else uuid.UUID(str(found))
    for index in TIME_COLUMNS:
        if values[index] is not None:
            values[index] = values[index].astimezone(UTC)
    return tuple(values)


def _user_params(user_id: uuid.UUID, session_id: uuid.UUID, kid: str | None) -> dict[str, Any]:
    return {"user_id": user_id, "session_id": session_id, "now": utcnow(), "kid": kid}


def _principal(rows: list[tuple[Any, ...]], session_id: uuid.UUID) -> Principal | None:
    if not rows:
        return None
    width = len(ACCOUNT_COLUMNS)
    account = Account(*rows[0][:width])
    amr = tuple(str(rows[0][width]).split())
    role_names = sorted(row[width + 1] for row in rows if row[width + 1] is not None)
    granted = {permission for row in rows for permission in row[width + 2] or []}
    permissions = effective_permissions(account.is_superuser, granted)
    return Principal(account.id, session_id, role_names, permissions, account=account, amr=amr)


def load_user(
    connection: Connection, user_id: uuid.UUID, session_id: uuid.UUID, kid: str | None = None
) -> Principal | None:
    """The user with their roles, if the session is live; None otherwise. One round trip."""
    params = _user_params(user_id, session_id, kid)
    return _principal(_user_rows(connection, params, kid is not None), session_id)


async def load_user_async(
    reads: AsyncReads, user_id: uuid.UUID, session_id: uuid.UUID, kid: str | None
) -> Principal | None:
    """load_user on the event loop (PostgreSQL): the same query, on a non-blocking connection."""
    statement = PREPARED[kid is not None]
    values = _driver_values(_user_params(user_id, session_id, kid))
    rows = await reads.fetch(statement.name, statement.prepare, statement.execute, statement.sql, values)
    return _principal([_as_python(row) for row in rows], session_id)


def load_client(
    connection: Connection,
    client_id: str,
    generation: uuid.UUID,
    kid: str | None = None,
    claimed: Any = None,
) -> Principal | None:
    """The service client, if it is active and its secret unchanged; None otherwise."""
    row = connection.execute(
        select(clients.c.id, clients.c.permissions).where(
            clients.c.client_id == client_id,
            clients.c.token_generation == generation,
            clients.c.is_active,
            *_key_is_live(kid, utcnow()),
        )
    ).first()
    if row is None:
        return None
    granted = frozenset(row.permissions or []) & frozenset(claimed if isinstance(claimed, list) else [])
    return Principal(row.id, generation, [], granted, client_id=client_id)


def load(connection: Connection, claims: dict[str, Any], kid: str | None) -> Principal | None:
    """Whoever the verified claims name, if still live."""
    session_id = uuid.UUID(claims["sid"])
    if "client_id" in claims:
        return load_client(connection, str(claims["client_id"]), session_id, kid, claims.get("permissions"))
    try:
        user_id = uuid.UUID(claims["sub"])
    except ValueError:
        return None
    return load_user(connection, user_id, session_id, kid)


def verify(engine: Engine, settings: Settings, token: str) -> tuple[dict[str, Any], str | None]:
    """The token's claims and `kid`, signature and claims checked; TokenExpired/TokenInvalid."""
    return decode_access_token(settings, token, lambda kid: public_key(engine, kid))


def _claims_or_401(engine: Engine, settings: Settings, token: str | None) -> tuple[dict[str, Any], str | None]:
    if not token:
        raise AppError(401, ErrorCode.NOT_AUTHENTICATED, "Not authenticated.", headers=BEARER)
    try:
        return verify(engine, settings, token)
    except TokenExpired:
        raise AppError(401, ErrorCode.TOKEN_EXPIRED, "The access token has expired.", headers=BEARER_INVALID) from None
    except TokenInvalid:
        raise AppError(401, ErrorCode.INVALID_TOKEN, "The access token is invalid.", headers=BEARER_INVALID) from None


def _live(principal: Principal | None) -> Principal:
    if principal is None:
        raise AppError(401, ErrorCode.INVALID_TOKEN, "The session has ended; log in again.", headers=BEARER_INVALID)
    if principal.account is not None and not principal.account.is_active:
        raise AppError(403, ErrorCode.INACTIVE_USER, "This account is deactivated.")
    return principal


def _load_outside_a_transaction(engine: Engine, claims: dict[str, Any], kid: str | None) -> Principal | None:
    """A plain read, retried once on a fresh connection if the server dropped the pooled one."""
    for attempt in (1, 2):
        try:
            with engine.connect() as connection:
                return load(connection.execution_options(isolation_level="AUTOCOMMIT"), claims, kid)
        except DBAPIError as exc:
            if attempt == 2 or not exc.connection_invalidated:
                raise
    raise AssertionError("unreachable")


def authenticate(engine: Engine, settings: Settings, token: str | None) -> Principal:
    """The bearer token's principal, or 401 (NOT_AUTHENTICATED, TOKEN_EXPIRED, INVALID_TOKEN)
    or 403 INACTIVE_USER. Blocking: for the thread pool."""
    claims, kid = _claims_or_401(engine, settings, token)
    return _live(_load_outside_a_transaction(engine, claims, kid))


async def authenticate_async(engine: Engine, reads: AsyncReads, settings: Settings, token: str | None) -> Principal:
    """`authenticate` without leaving the event loop, for PostgreSQL: the token checked here
    (a key not cached yet is looked up in the thread pool, once per process and key), a
    user's session read on a non-blocking connection; a service client's in the pool."""
    if token and settings.jwt_algorithm in ASYMMETRIC:
        try:
            kid = jwt.get_unverified_header(token).get("kid")
        except JOSEError:
            kid = None
        if isinstance(kid, str) and 0 < len(kid) <= 64 and not is_cached(kid):
            await run_in_threadpool(public_key, engine, kid)
    claims, kid = _claims_or_401(engine, settings, token)
    if "client_id" in claims:
        return _live(await run_in_threadpool(_load_outside_a_transaction, engine, claims, kid))
    try:
        user_id = uuid.UUID(claims["sub"])
    except ValueError:
        return _live(None)
    return _live(await load_user_async(reads, user_id, uuid.UUID(claims["sid"]), kid))
