"""Service clients: other services authenticating as themselves (OAuth2 client credentials).

A client has an id, a secret shown once (only its SHA-256 is kept: it is 256 random
bits, not a password, so a slow hash would only slow every introspection down), and the
permissions its tokens carry. Nobody can give a client a permission they do not hold,
nor change, rotate or delete a client holding one they lack: clients:write is not a way
up. Its tokens name its secret's generation (`sid`), so a new secret, deactivation or
deletion cuts them on the next request, like a session.
"""

import base64
import hmac
import secrets
import uuid
from typing import Any
from urllib.parse import unquote

from sqlalchemy import func
from sqlalchemy.exc import IntegrityError
from sqlmodel import Session, col, select

from auth_service import audit, signing_keys
from auth_service.config import Settings
from auth_service.errors import AppError, ErrorCode, not_found, permission_denied
from auth_service.models import Client, utcnow
from auth_service.principals import Principal
from auth_service.roles import check_no_escalation
from auth_service.schemas import Token
from auth_service.security import create_access_token, token_digest

CLIENT_ID_PREFIX = "svc_"
_DUMMY_DIGEST = token_digest("no such client")


def invalid_client(basic: bool = True) -> AppError:
    """RFC 6749 §5.2: 401 with a Basic challenge (400 when the credentials came in the form)."""
    headers = {"WWW-Authenticate": 'Basic realm="auth_service"'} if basic else None
    detail = "Client authentication failed."
    return AppError(
        401 if basic else 400, ErrorCode.INVALID_CLIENT, detail, headers=headers, oauth_error="invalid_client"
    )


def sends_basic(authorization: str | None) -> bool:
    """Whether the header is HTTP Basic at all, well-formed or not."""
    return authorization is not None and authorization.split(" ", 1)[0].lower() == "basic"


def basic_credentials(authorization: str | None) -> tuple[str, str] | None:
    """`Authorization: Basic base64(id:secret)`, each part form-encoded (RFC 6749 §2.3.1);
    None when the header is not Basic or not well-formed."""
    if authorization is None or not sends_basic(authorization):
        return None
    try:
        decoded = base64.b64decode(authorization[6:].strip(), validate=True).decode()
    except ValueError:  # binascii.Error, UnicodeDecodeError, non-ASCII input
        return None
    client_id, sep, secret = decoded.partition(":")
    return (unquote(client_id), unquote(secret)) if sep else None


def authenticate(session: Session, client_id: str, secret: str) -> Client | None:
    """The active client with this id and secret; None otherwise (in the same time either way)."""
    valid = bool(client_id) and len(client_id) <= 64 and client_id.isascii() and client_id.isprintable()
    client = session.exec(select(Client).where(col(Client.client_id) == client_id)).first() if valid else None
    expected = client.secret_hash if client else _DUMMY_DIGEST
    if not hmac.compare_digest(expected, token_digest(secret)) or client is None or not client.is_active:
        return None
    return client


def issue_token(session: Session, settings: Settings, client: Client, scope: str | None) -> Token:
    """An access token for the client (no refresh token: it can always authenticate again).
    `scope` narrows it to some of the client's permissions (RFC 6749 §4.4.2)."""
    signer = signing_keys.signer(session, settings)
    granted = sorted(client.permissions)
    if scope:
        asked = sorted(set(scope.split()))
        if not set(asked) <= set(granted):
            raise AppError(400, ErrorCode.VALIDATION_ERROR, "The scope asks for permissions the client does not have.",
                           oauth_error="invalid_scope")  # fmt: skip
        granted = asked
    claims = {"sub": client.client_id, "client_id": client.client_id, "sid": str(client.token_generation),
              "roles": [], "permissions": granted}  # fmt: skip
    access_token, expires_in = create_access_token(signer, settings, claims)
    client.last_used_at = utcnow()
    session.add(client)
    session.commit()
    return Token(access_token=access_token, expires_in=expires_in, scope=" ".join(granted))


# --- administration --------------------------------------------------------------------


def check_can_manage(actor: Principal, client: Client) -> None:
    missing = sorted(p for p in set(client.permissions) if not actor.can(p))
    if missing:
        raise permission_denied(
            f"You can only manage clients whose permissions you hold; missing: {', '.join(missing)}."
        )


def get_client(session: Session, client_id: str) -> Client:
    client = session.exec(select(Client).where(col(Client.client_id) == client_id)).first()
    if client is None:
        raise not_found("Client")
    return client


def list_clients(session: Session, *, offset: int, limit: int) -> tuple[list[Client], int]:
    count = session.exec(select(func.count()).select_from(Client)).one()
    found = session.exec(select(Client).order_by(col(Client.created_at), col(Client.id)).offset(offset).limit(limit))
    return list(found.all()), count


def _new_secret(client: Client) -> str:
    secret = secrets.token_urlsafe(32)
    client.secret_hash = token_digest(secret)
    client.token_generation = uuid.uuid4()  # tokens of the previous secret stop working
    return secret


def create_client(
    session: Session, settings: Settings, *, name: str, permissions: list[str], actor: Principal | None
) -> tuple[Client, str]:
    """A new client and its secret (shown once). `actor` None: the CLI, which may grant anything."""
    if actor is not None:
        check_no_escalation(actor, permissions)
    client = Client(client_id=CLIENT_ID_PREFIX + secrets.token_urlsafe(12), name=name, secret_hash="",
                    permissions=sorted(set(permissions)))  # fmt: skip
    secret = _new_secret(client)
    session.add(client)
    details = {"client_id": client.client_id, "name": name, "permissions": client.permissions}
    audit.record(session, settings, "client.created", actor_id=actor.id if actor else None, details=details)
    try:
        session.commit()
    except IntegrityError:  # a 72-bit random id taken: try once more
        session.rollback()
        return create_client(session, settings, name=name, permissions=permissions, actor=actor)
    session.refresh(client)
    return client, secret


def update_client(
    session: Session, settings: Settings, actor: Principal, client: Client, changes: dict[str, Any]
) -> Client:
    check_can_manage(actor, client)
    if "permissions" in changes:
        check_no_escalation(actor, changes["permissions"])
        client.permissions = sorted(set(changes["permissions"]))
    for field in ("name", "is_active"):
        if field in changes:
            setattr(client, field, changes[field])
    if changes.get("is_active") is False:
        client.token_generation = uuid.uuid4()  # ended for good: reactivating revives no token
    client.updated_at = utcnow()
    session.add(client)
    details = {"client_id": client.client_id, "fields": sorted(changes), "permissions": client.permissions}
    audit.record(session, settings, "client.updated", actor_id=actor.id, details=details)
    session.commit()
    session.refresh(client)
    return client


def rotate_secret(session: Session, settings: Settings, actor: Principal, client: Client) -> str:
    """A new secret; the old one, and every token it got, stop working at once."""
    check_can_manage(actor, client)
    secret = _new_secret(client)
    client.updated_at = utcnow()
    session.add(client)
    audit.record(session, settings, "client.secret_rotated", actor_id=actor.id, details={"client_id": client.client_id})
    session.commit()
    session.refresh(client)
    return secret


def delete_client(session: Session, settings: Settings, actor: Principal, client: Client) -> None:
    check_can_manage(actor, client)
    details = {"client_id": client.client_id}
    session.delete(client)
    session.flush()  # row locks before the audit lock (see audit.record)
    audit.record(session, settings, "client.deleted", actor_id=actor.id, details=details)
    session.commit()
