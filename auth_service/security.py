"""Password hashing, access-token JWTs, and random one-time secrets with their digests."""

import base64
import hashlib
import secrets
import threading
import unicodedata
import uuid
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from contextvars import ContextVar
from dataclasses import dataclass
from datetime import timedelta
from functools import lru_cache
from typing import Any

from cryptography.fernet import Fernet
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.kdf.hkdf import HKDF
from jose import ExpiredSignatureError, JOSEError, jwt
from jose.backends.base import Key
from pwdlib import PasswordHash
from pwdlib.hashers.argon2 import Argon2Hasher

from auth_service.config import Settings
from auth_service.errors import AppError, ErrorCode
from auth_service.metrics import HASH_SECONDS
from auth_service.models import utcnow

ACCESS_TOKEN_TYPE = "access"


# --- passwords -------------------------------------------------------------------------


def normalize_password(password: str) -> str:
    """NFKC, so the same password typed on two keyboards hashes the same (NIST 800-63B)."""
    return unicodedata.normalize("NFKC", password)


def hashing_is_busy() -> AppError:
    detail = "Too many logins at once; try again shortly."
    return AppError(503, ErrorCode.SERVICE_UNAVAILABLE, detail, headers={"Retry-After": "1"})


class _Hasher:
    """Argon2id with two bounds per process: `slots` hashes run at once (each takes
    ARGON2_MEMORY_COST of memory), and at most `limit` requests (HASH_QUEUE_LIMIT) hold
    a thread for one, running or waiting. Past that, 503 at once: a login flood cannot
    take every worker thread and stall cheap requests such as /users/me."""

    def __init__(self, hash: PasswordHash, concurrency: int, limit: int) -> None:
        self.hash = hash
        self.slots = threading.BoundedSemaphore(concurrency)
        self.limit = max(concurrency, limit)
        self._in_line = 0
        self._lock = threading.Lock()

    @property
    def in_line(self) -> int:
        """Requests running or waiting for a hash."""
        return self._in_line

    def admit(self) -> bool:
        """Take a place in line, if there is one."""
        with self._lock:
            if self._in_line >= self.limit:
                return False
            self._in_line += 1
            return True

    def leave(self) -> None:
        with self._lock:
            self._in_line -= 1

    @contextmanager
    def turn(self) -> Iterator[None]:
        """Wait for a slot, and hash. A request admitted up front (`admitted`) has its place
        in line already; any other takes one here, or gets 503."""
        here = not admitted.get()
        if here and not self.admit():
            raise hashing_is_busy()
        try:
            with HASH_SECONDS.time(), self.slots:
                yield
        finally:
            if here:
                self.leave()


# Set for a request that took its place in the hash queue before any work (a login: see
# deps.admit_to_the_hash_queue), so it is turned away at once, not after its queries.
admitted: ContextVar[bool] = ContextVar("admitted_to_the_hash_queue", default=False)


@lru_cache
def _hasher(time_cost: int, memory_cost: int, parallelism: int, concurrency: int, queue_limit: int) -> _Hasher:
    argon2 = Argon2Hasher(time_cost=time_cost, memory_cost=memory_cost, parallelism=parallelism)
    return _Hasher(PasswordHash((argon2,)), concurrency, queue_limit)


def _get_hasher(settings: Settings) -> _Hasher:
    return _hasher(
        settings.argon2_time_cost,
        settings.argon2_memory_cost,
        settings.argon2_parallelism,
        settings.hash_concurrency,
        settings.hash_queue,
    )


@contextmanager
def place_in_the_hash_queue(settings: Settings) -> Iterator[None]:
    """Hold a place in the hash queue for the rest of the request, or 503 at once."""
    hasher = _get_hasher(settings)
    if not hasher.admit():
        raise hashing_is_busy()
    token = admitted.set(True)
    try:
        yield
    finally:
        admitted.reset(token)
        hasher.leave()


def hash_password(settings: Settings, password: str) -> str:
    hasher = _get_hasher(settings)
    with hasher.turn():
        return hasher.hash.hash(normalize_password(password))


def verify_password(settings: Settings, password: str, password_hash: str | None) -> tuple[bool, str | None]:
    """Check a password; also give a new hash when the stored one used older parameters.

    With no hash (unknown email) it verifies against a dummy hash, so the answer takes
    as long as for a real account.
    """
    hasher = _get_hasher(settings)
    with hasher.turn():
        if password_hash is None:
            hasher.hash.verify_and_update(normalize_password(password), _dummy_hash(settings))
            return False, None
        return hasher.hash.verify_and_update(normalize_password(password), password_hash)


def _dummy_hash(settings: Settings) -> str:
    return _dummy_hash_for(settings.argon2_time_cost, settings.argon2_memory_cost, settings.argon2_parallelism)


@lru_cache
def _dummy_hash_for(time_cost: int, memory_cost: int, parallelism: int) -> str:
    argon2 = Argon2Hasher(time_cost=time_cost, memory_cost=memory_cost, parallelism=parallelism)
    return argon2.hash(secrets.token_urlsafe(16))


# --- access tokens ---------------------------------------------------------------------

ASYMMETRIC = ("ES256", "RS256")


@dataclass(frozen=True)
class Signer:
    """What signs a token: the algorithm, the key (a python-jose private key, or the secret
    with HS*), and its `kid` (none for HS*)."""

    algorithm: str
    key: Key | str
    kid: str | None = None


def create_access_token(signer: Signer, settings: Settings, claims: dict[str, Any]) -> tuple[str, int]:
    """A signed JWT with the standard claims added; returns it with its lifetime in seconds."""
    now = utcnow()
    lifetime = timedelta(minutes=settings.access_token_expire_minutes)
    claims = {
        "jti": uuid.uuid4().hex,
        "iat": int(now.timestamp()),
        "exp": int((now + lifetime).timestamp()),
        "iss": settings.jwt_issuer,
        "aud": settings.jwt_audience,
        "type": ACCESS_TOKEN_TYPE,
        **claims,
    }
    headers = {"kid": signer.kid} if signer.kid else None
    token = jwt.encode(claims, signer.key, algorithm=signer.algorithm, headers=headers)
    return token, int(lifetime.total_seconds())


class TokenExpired(Exception):
    pass


class TokenInvalid(Exception):
    pass


REQUIRED_CLAIMS = ("sub", "sid", "jti", "iat", "exp", "iss", "aud")
KeyLookup = Callable[[str], Key | None]


def decode_access_token(
    settings: Settings, token: str, verification_key: KeyLookup
) -> tuple[dict[str, Any], str | None]:
    """Verify signature, issuer, audience, expiry and type, with JWT_ALGORITHM only (so an
    HS256 token signed with a public key is refused: no algorithm confusion).

    With ES256/RS256 the key is the one its `kid` names (`verification_key` returns None
    for a kid we do not know). Returns the claims and the kid. Raises TokenExpired or
    TokenInvalid; every python-jose error becomes one of them.
    """
    kid = None
    try:
        key: Key | str
        if settings.jwt_algorithm in ASYMMETRIC:
            kid = jwt.get_unverified_header(token).get("kid")
            found = verification_key(kid) if isinstance(kid, str) and 0 < len(kid) <= 64 else None
            if found is None:
                raise TokenInvalid
            key = found
        else:
            key = settings.secret
        claims: dict[str, Any] = jwt.decode(
            token,
            key,
            algorithms=[settings.jwt_algorithm],
            audience=settings.jwt_audience,
            issuer=settings.jwt_issuer,
            options={f"require_{claim}": True for claim in REQUIRED_CLAIMS},
        )
    except ExpiredSignatureError as exc:
        raise TokenExpired from exc
    except (JOSEError, ValueError, TypeError, KeyError, AttributeError) as exc:
        raise TokenInvalid from exc
    if claims.get("type") != ACCESS_TOKEN_TYPE or not isinstance(claims.get("sub"), str):
        raise TokenInvalid
    try:
        uuid.UUID(str(claims["sid"]))
    except ValueError as exc:
        raise TokenInvalid from exc
    return claims, kid


# --- secrets at rest -------------------------------------------------------------------


@lru_cache
def _fernet(secret: str, purpose: str) -> Fernet:
    key = HKDF(algorithm=hashes.SHA256(), length=32, salt=None, info=f"auth_service:{purpose}".encode()).derive(
        secret.encode()
    )
    return Fernet(base64.urlsafe_b64encode(key))


def seal(settings: Settings, purpose: str, data: bytes) -> str:
    """Encrypt and authenticate `data` (Fernet) with a key derived from SECRET_KEY for `purpose`."""
    return _fernet(settings.secret, purpose).encrypt(data).decode()


def unseal(settings: Settings, purpose: str, sealed: str) -> bytes:
    """The data `seal` sealed; raises InvalidToken if it was sealed under another SECRET_KEY."""
    return _fernet(settings.secret, purpose).decrypt(sealed.encode())


# --- opaque secrets (refresh and one-time tokens) --------------------------------------


def new_opaque_token() -> str:
    """256 random bits, URL-safe."""
    return secrets.token_urlsafe(32)


def token_digest(token: str) -> str:
    """What we store instead of the token: a leaked table gives nothing usable."""
    return hashlib.sha256(token.encode("utf-8", "surrogatepass")).hexdigest()
