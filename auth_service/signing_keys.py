"""The keys that sign access tokens: made at first start, kept in the database (so every
worker and host signs with the same one), rotated by hand, published as a JWKS.

Other services verify our tokens with the public keys alone; only this service can sign.
A key rotated out keeps verifying until every token it signed has expired
(ACCESS_TOKEN_EXPIRE_MINUTES after the rotation); then it is refused, unpublished, and
`prune` deletes it. Key objects are cached per process by `kid`: a kid names one key
forever, and whether it may still be used is asked of the database with every request
(see principals.py), never of the cache.
"""

import base64
import hashlib
import json
import logging
import threading
from datetime import datetime, timedelta
from typing import Any

from cryptography.fernet import InvalidToken
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from jose import jwk
from jose.backends.base import Key
from sqlalchemy import Engine, delete, or_
from sqlalchemy.exc import IntegrityError
from sqlmodel import Session, col, select

from auth_service import audit
from auth_service.config import Settings
from auth_service.db import new_session, release_connection
from auth_service.models import SigningKey, utcnow
from auth_service.security import ASYMMETRIC, Signer, seal, unseal

logger = logging.getLogger(__name__)

SEAL_PURPOSE = "signing-key"
table = SigningKey.__table__  # type: ignore[attr-defined]

_public_keys: dict[str, Key] = {}  # kid -> python-jose key: what a kid names never changes
_private_keys: dict[str, Key] = {}
_keys_lock = threading.Lock()


def usable(now: datetime | Any) -> Any:
    """The SQL condition of a key that may still verify (and is published)."""
    return or_(table.c.expires_at.is_(None), table.c.expires_at > now)


def thumbprint(public_jwk: dict[str, Any]) -> str:
    """RFC 7638: the SHA-256 of the key's required members, as the `kid`."""
    members = ("crv", "kty", "x", "y") if public_jwk["kty"] == "EC" else ("e", "kty", "n")
    canonical = json.dumps({m: public_jwk[m] for m in members}, separators=(",", ":"), sort_keys=True)
    return base64.urlsafe_b64encode(hashlib.sha256(canonical.encode()).digest()).rstrip(b"=").decode()


def _generate(settings: Settings) -> SigningKey:
    algorithm = settings.jwt_algorithm
    private: ec.EllipticCurvePrivateKey | rsa.RSAPrivateKey = (
        ec.generate_private_key(ec.SECP256R1())
        if algorithm == "ES256"
        else rsa.generate_private_key(public_exponent=65537, key_size=2048)
    )
    pem = private.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
    )
    public_pem = private.public_key().public_bytes(
        serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
    )
    public_jwk = jwk.construct(public_pem.decode(), algorithm).to_dict()
    kid = thumbprint(public_jwk)
    public_jwk.update({"kid": kid, "alg": algorithm, "use": "sig"})
    return SigningKey(
        kid=kid, algorithm=algorithm, public_jwk=public_jwk, private_key=seal(settings, SEAL_PURPOSE, pem)
    )


def rotate(engine: Engine, settings: Settings, *, expire_previous_now: bool = False) -> tuple[str, SigningKey | None]:
    """Make a new key current. The previous one verifies until the tokens it signed have
    expired, or, with `expire_previous_now` (a leaked key), not at all from now on: its
    sessions go on, their clients refresh to get tokens under the new key."""
    now = utcnow()
    new_key = _generate(settings)
    with new_session(engine) as session:
        previous = session.exec(_select_current().with_for_update()).first()
        if previous is not None:
            lifetime = timedelta(minutes=settings.access_token_expire_minutes)
            previous.current, previous.retired_at = None, now
            previous.expires_at = now if expire_previous_now else now + lifetime
            session.add(previous)
            session.flush()  # the unique `current` flag is free before the new key takes it
        session.add(new_key)
        details = {
            "kid": new_key.kid,
            "algorithm": new_key.algorithm,
            "previous_kid": previous.kid if previous else None,
        }
        if previous is not None:
            details["previous_expires_at"] = previous.expires_at.isoformat() if previous.expires_at else None
        audit.record(session, settings, "signing_key.rotated", details=details)
        session.commit()
    return new_key.kid, previous


def _select_current() -> Any:
    return select(SigningKey).where(col(SigningKey.current).is_(True))


def ensure_current(engine: Engine, settings: Settings) -> None:
    """At start-up: with ES256/RS256, make a key unless a current one of that algorithm
    exists, or its private half can no longer be unsealed (SECRET_KEY changed). Workers
    starting together agree: the unique `current` flag lets one insert win."""
    if settings.jwt_algorithm not in ASYMMETRIC:
        return
    with new_session(engine) as session:
        found = session.exec(_select_current()).first()
    if found is not None and found.algorithm == settings.jwt_algorithm and _can_unseal(settings, found):
        return
    if found is None:
        with new_session(engine) as session:
            session.add(_generate(settings))
            try:
                session.commit()
                logger.info("made the first %s signing key", settings.jwt_algorithm)
            except IntegrityError:  # another worker made it first
                session.rollback()
        return
    reason = "JWT_ALGORITHM changed" if found.algorithm != settings.jwt_algorithm else "SECRET_KEY changed"
    try:
        kid, _ = rotate(engine, settings)
    except IntegrityError:  # another worker, starting at the same time, rotated first
        return
    logger.warning("%s: rotated the signing key to %s", reason, kid)


def _can_unseal(settings: Settings, key: SigningKey) -> bool:
    try:
        unseal(settings, SEAL_PURPOSE, key.private_key)
        return True
    except InvalidToken:
        return False


def signer(session: Session, settings: Settings) -> Signer:
    """What signs new tokens: the current key (one indexed read; the key object is cached),
    or SECRET_KEY with HS*. Call it before the transaction writes anything: a missing key
    is made in a transaction of its own, after this one hands its connection back."""
    if settings.jwt_algorithm not in ASYMMETRIC:
        return Signer(settings.jwt_algorithm, settings.secret)
    current = select(table.c.kid, table.c.algorithm, table.c.private_key).where(table.c.current.is_(True))
    row = session.connection().execute(current).first()
    if row is None:  # the database was down at start-up
        ensure_current(release_connection(session), settings)
        row = session.connection().execute(current).one()
    kid, algorithm, sealed = row
    private = _private_keys.get(kid)
    if private is None:
        private = jwk.construct(unseal(settings, SEAL_PURPOSE, sealed).decode(), algorithm)
        with _keys_lock:
            _private_keys[kid] = private
    return Signer(algorithm, private, kid)


def is_cached(kid: str) -> bool:
    return kid in _public_keys


def public_key(engine: Engine, kid: str) -> Key | None:
    """The public key a `kid` names, from the cache or the database; None if unknown."""
    key = _public_keys.get(kid)
    if key is not None:
        return key
    with engine.connect() as connection:
        row = connection.execute(select(table.c.algorithm, table.c.public_jwk).where(table.c.kid == kid)).first()
    if row is None:
        return None
    key = jwk.construct(row[1], row[0])
    with _keys_lock:
        _public_keys[kid] = key
    return key


def published(engine: Engine) -> list[dict[str, Any]]:
    """The JWKS `keys`: the current key and those still verifying tokens."""
    with engine.connect() as connection:
        rows = connection.execute(
            select(table.c.public_jwk).where(usable(utcnow())).order_by(table.c.created_at.desc())
        ).all()
    return [dict(row[0]) for row in rows]


def prune(engine: Engine) -> int:
    """Delete keys whose every token has expired."""
    with engine.begin() as connection:
        result = connection.execute(
            delete(table).where(
                table.c.current.is_(None), table.c.expires_at.is_not(None), table.c.expires_at <= utcnow()
            )
        )
    return int(result.rowcount)
