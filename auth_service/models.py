"""The tables. Every change here comes with an Alembic migration (a test checks the two agree)."""

import uuid
from datetime import UTC, datetime
from typing import Any

from sqlalchemy import JSON, BigInteger, CheckConstraint, DateTime, Dialect, Integer, MetaData, Text
from sqlalchemy.types import TypeDecorator
from sqlmodel import Field, SQLModel

# Deterministic constraint names, so migrations can name what they alter on both databases.
SQLModel.metadata.naming_convention = {
    "ix": "ix_%(column_0_label)s",
    "uq": "uq_%(table_name)s_%(column_0_name)s",
    "ck": "ck_%(table_name)s_%(constraint_name)s",
    "fk": "fk_%(table_name)s_%(column_0_name)s_%(referred_table_name)s",
    "pk": "pk_%(table_name)s",
}
metadata: MetaData = SQLModel.metadata


def utcnow() -> datetime:
    return datetime.now(UTC)


class UTCDateTime(TypeDecorator[datetime]):
    """Aware UTC datetimes in and out; SQLite keeps no offset, so we add it back on read."""

    impl = DateTime(timezone=True)
    cache_ok = True

    def process_bind_param(self, value: datetime | None, dialect: Dialect) -> datetime | None:
        if value is None:
            return None
        if value.tzinfo is None:
            raise ValueError("naive datetime given to a UTC column")
        value = value.astimezone(UTC)
        return value.replace(tzinfo=None) if dialect.name == "sqlite" else value

    def process_result_value(self, value: datetime | None, dialect: Dialect) -> datetime | None:
        if value is None:
            return None
        return value.replace(tzinfo=UTC) if value.tzinfo is None else value.astimezone(UTC)


def timestamp(**kwargs: Any) -> Any:
    return Field(sa_type=UTCDateTime, **kwargs)


class UserBase(SQLModel):
    email: str = Field(max_length=254)
    full_name: str | None = Field(default=None, max_length=255)


class User(UserBase, table=True):
    __tablename__ = "users"
    __table_args__ = (CheckConstraint("email = lower(email)", name="email_lowercase"),)

    id: uuid.UUID = Field(default_factory=uuid.uuid4, primary_key=True)
    email: str = Field(max_length=254, unique=True)
    hashed_password: str = Field(max_length=255)
    is_active: bool = True
    is_superuser: bool = False
    is_verified: bool = False
    # Bumped whenever the password is set: a login (or any check of the password) commits
    # only if the version it read with the hash is still current, see accounts.authenticate.
    credentials_version: int = Field(default=0, sa_column_kwargs={"server_default": "0"})
    # Two-factor (TOTP): the secrets sealed (see mfa.py); on once `totp_enabled_at` is set.
    totp_secret: str | None = Field(default=None, sa_type=Text, nullable=True)
    totp_pending_secret: str | None = Field(default=None, sa_type=Text, nullable=True)
    totp_enabled_at: datetime | None = timestamp(default=None, nullable=True)
    totp_last_step: int | None = Field(default=None, sa_type=BigInteger, nullable=True)  # no code twice
    created_at: datetime = timestamp(default_factory=utcnow)
    updated_at: datetime = timestamp(default_factory=utcnow)
    last_login_at: datetime | None = timestamp(default=None, nullable=True)


class UserSession(SQLModel, table=True):
    """One login: the tokens issued on it live exactly as long as it does."""

    __tablename__ = "user_session"

    id: uuid.UUID = Field(default_factory=uuid.uuid4, primary_key=True)
    user_id: uuid.UUID = Field(foreign_key="users.id", ondelete="CASCADE", index=True)
    created_at: datetime = timestamp(default_factory=utcnow)
    last_used_at: datetime = timestamp(default_factory=utcnow)
    expires_at: datetime = timestamp()
    revoked_at: datetime | None = timestamp(default=None, nullable=True)
    revoked_reason: str | None = Field(default=None, max_length=32)
    user_agent: str | None = Field(default=None, max_length=512)
    client_ip: str | None = Field(default=None, max_length=45)
    amr: str = Field(default="pwd", max_length=32, sa_column_kwargs={"server_default": "pwd"})  # "pwd otp"


class RefreshToken(SQLModel, table=True):
    """Only the SHA-256 of each refresh token; a used one stays to catch its replay."""

    __tablename__ = "refresh_token"

    id: uuid.UUID = Field(default_factory=uuid.uuid4, primary_key=True)
    session_id: uuid.UUID = Field(foreign_key="user_session.id", ondelete="CASCADE", index=True)
    token_hash: str = Field(max_length=64, unique=True)
    created_at: datetime = timestamp(default_factory=utcnow)
    used_at: datetime | None = timestamp(default=None, nullable=True)
    # With REFRESH_REUSE_GRACE_SECONDS: the pair this token was rotated into, sealed.
    successor: str | None = Field(default=None, sa_type=Text, nullable=True)


class Role(SQLModel, table=True):
    """A named set of `area:verb` permissions; users hold roles, never permissions directly."""

    __tablename__ = "role"

    id: uuid.UUID = Field(default_factory=uuid.uuid4, primary_key=True)
    name: str = Field(max_length=64, unique=True)
    description: str | None = Field(default=None, max_length=255)
    permissions: list[str] = Field(default_factory=list, sa_type=JSON)
    created_at: datetime = timestamp(default_factory=utcnow)
    updated_at: datetime = timestamp(default_factory=utcnow)


class UserRole(SQLModel, table=True):
    __tablename__ = "user_role"

    user_id: uuid.UUID = Field(foreign_key="users.id", ondelete="CASCADE", primary_key=True)
    role_id: uuid.UUID = Field(foreign_key="role.id", ondelete="CASCADE", primary_key=True, index=True)


class OneTimeToken(SQLModel, table=True):
    """A single-use secret sent by mail (email verification, password reset); only its hash is kept."""

    __tablename__ = "one_time_token"

    id: uuid.UUID = Field(default_factory=uuid.uuid4, primary_key=True)
    user_id: uuid.UUID = Field(foreign_key="users.id", ondelete="CASCADE", index=True)
    purpose: str = Field(max_length=32)
    token_hash: str = Field(max_length=64, unique=True)
    email: str = Field(max_length=254)
    created_at: datetime = timestamp(default_factory=utcnow)
    expires_at: datetime = timestamp()
    used_at: datetime | None = timestamp(default=None, nullable=True)


class OutboxMessage(SQLModel, table=True):
    """Something to deliver (a mail), written in the transaction that caused it, sent after commit."""

    __tablename__ = "outbox"

    id: uuid.UUID = Field(default_factory=uuid.uuid4, primary_key=True)
    kind: str = Field(max_length=16)
    payload: dict[str, Any] = Field(default_factory=dict, sa_type=JSON)
    created_at: datetime = timestamp(default_factory=utcnow)
    available_at: datetime = timestamp(default_factory=utcnow, index=True)
    locked_until: datetime | None = timestamp(default=None, nullable=True)
    attempts: int = 0
    last_error: str | None = Field(default=None, max_length=500)
    sent_at: datetime | None = timestamp(default=None, nullable=True, index=True)


class AuditEvent(SQLModel, table=True):
    """Who did what to whom, from where. The integer id is the polling cursor: ids are
    assigned in commit order (see audit.record), so `after=<id>` never skips an event."""

    __tablename__ = "audit_event"

    id: int | None = Field(default=None, primary_key=True, sa_type=BigInteger().with_variant(Integer(), "sqlite"))
    at: datetime = timestamp(default_factory=utcnow, index=True)
    type: str = Field(max_length=64, index=True)
    actor_id: uuid.UUID | None = Field(default=None, index=True)
    subject_id: uuid.UUID | None = Field(default=None, index=True)
    client_ip: str | None = Field(default=None, max_length=45)
    user_agent: str | None = Field(default=None, max_length=512)
    request_id: str | None = Field(default=None, max_length=128)
    details: dict[str, Any] = Field(default_factory=dict, sa_type=JSON)


class RateLimit(SQLModel, table=True):
    """A counter shared by every worker: a fixed window of hits, and for logins a lock."""

    __tablename__ = "rate_limit"

    key: str = Field(max_length=300, primary_key=True)
    window_start: datetime = timestamp()
    count: int = 0
    locked_until: datetime | None = timestamp(default=None, nullable=True)


class SigningKey(SQLModel, table=True):
    """A key pair that signs access tokens. Exactly one is `current` (it signs); the ones
    rotated out keep verifying, and stay published, until `expires_at`, when every token
    they signed has expired. The private key is sealed with a key derived from SECRET_KEY."""

    __tablename__ = "signing_key"

    kid: str = Field(max_length=64, primary_key=True)  # the RFC 7638 thumbprint of the public key
    algorithm: str = Field(max_length=8)
    public_jwk: dict[str, Any] = Field(sa_type=JSON)
    private_key: str = Field(sa_type=Text)
    current: bool | None = Field(default=True, unique=True)  # True, or NULL: at most one current key
    created_at: datetime = timestamp(default_factory=utcnow)
    retired_at: datetime | None = timestamp(default=None, nullable=True)
    expires_at: datetime | None = timestamp(default=None, nullable=True)


class Client(SQLModel, table=True):
    """A service that authenticates as itself (client credentials), not as a person."""

    __tablename__ = "client"

    id: uuid.UUID = Field(default_factory=uuid.uuid4, primary_key=True)
    client_id: str = Field(max_length=64, unique=True)
    name: str = Field(max_length=255)
    secret_hash: str = Field(max_length=64)  # SHA-256: the secret is 256 random bits, not a password
    permissions: list[str] = Field(default_factory=list, sa_type=JSON)
    is_active: bool = True
    # Its tokens name it (`sid`): a new secret gets a new generation, which ends the old tokens.
    token_generation: uuid.UUID = Field(default_factory=uuid.uuid4)
    created_at: datetime = timestamp(default_factory=utcnow)
    updated_at: datetime = timestamp(default_factory=utcnow)
    last_used_at: datetime | None = timestamp(default=None, nullable=True)


class RecoveryCode(SQLModel, table=True):
    """A one-time code for when the authenticator is lost; only its keyed hash is kept."""

    __tablename__ = "recovery_code"

    id: uuid.UUID = Field(default_factory=uuid.uuid4, primary_key=True)
    user_id: uuid.UUID = Field(foreign_key="users.id", ondelete="CASCADE", index=True)
    code_hash: str = Field(max_length=64, unique=True)
    created_at: datetime = timestamp(default_factory=utcnow)
    used_at: datetime | None = timestamp(default=None, nullable=True)


class MfaChallenge(SQLModel, table=True):
    """The `mfa_token` of a login whose password was right: good once, for a few minutes,
    and only while the password it checked is still the account's."""

    __tablename__ = "mfa_challenge"

    id: uuid.UUID = Field(default_factory=uuid.uuid4, primary_key=True)
    user_id: uuid.UUID = Field(foreign_key="users.id", ondelete="CASCADE", index=True)
    token_hash: str = Field(max_length=64, unique=True)
    credentials_version: int
    created_at: datetime = timestamp(default_factory=utcnow)
    expires_at: datetime = timestamp()
    used_at: datetime | None = timestamp(default=None, nullable=True)
