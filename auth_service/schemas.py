"""The API's shapes: what requests may carry and what answers show (never a hash)."""

import uuid
from datetime import UTC, datetime
from typing import Annotated, Any

from email_validator import EmailNotValidError, validate_email
from pydantic import AfterValidator, StringConstraints, model_validator
from sqlmodel import Field, SQLModel

from auth_service.models import UserBase

# Intranet domains small teams use; email-validator refuses them as special-use names.
INTRANET_TLDS = ("local", "internal", "lan", "test")
PLACEHOLDER_TLD = "example"


def normalize_email(value: str) -> str:
    """Trimmed, syntax-checked without DNS, lower-cased: the one form we store and compare."""
    value = value.strip()
    domain = value.rpartition("@")[2]
    tld = domain.rpartition(".")[2].lower()
    intranet = tld in INTRANET_TLDS and "." in domain
    probe = value[: len(value) - len(tld)] + PLACEHOLDER_TLD if intranet else value
    try:
        result = validate_email(probe, check_deliverability=False)
    except EmailNotValidError as exc:
        raise ValueError(str(exc)) from None
    normalized = result.normalized
    if intranet:
        normalized = normalized[: -len(PLACEHOLDER_TLD)] + tld
    return normalized.lower()


def printable(value: str, limit: int) -> str:
    """Raw client text made safe to store and log: no control characters, bounded length."""
    return "".join(c for c in value if c.isprintable())[:limit]


# C0 and C1 controls, and the bidi embeddings, overrides and isolates that make a name
# display as something else ("Trojan Source").
_HIDDEN = {*range(0x00, 0x20), *range(0x7F, 0xA0), *range(0x202A, 0x202F), *range(0x2066, 0x206A)}


def _no_control_characters(value: str) -> str:
    if any(ord(c) in _HIDDEN for c in value):
        raise ValueError("must not contain control characters or bidirectional overrides")
    return value


def _as_utc(value: datetime) -> datetime:
    """A time without an offset is taken as UTC; one that leaves the calendar in UTC is refused."""
    try:
        return (value if value.tzinfo else value.replace(tzinfo=UTC)).astimezone(UTC)
    except OverflowError:
        raise ValueError("time out of range") from None


UTCTime = Annotated[datetime, AfterValidator(_as_utc)]
Email = Annotated[str, StringConstraints(max_length=320), AfterValidator(normalize_email)]
Text = Annotated[str, StringConstraints(strip_whitespace=True, max_length=255), AfterValidator(_no_control_characters)]
SearchText = Annotated[
    str, StringConstraints(strip_whitespace=True, max_length=100), AfterValidator(_no_control_characters)
]
# Long enough for the policy to explain a too-long password; the body limit bounds it anyway.
Password = Annotated[str, StringConstraints(min_length=1, max_length=4096)]


class ErrorResponse(SQLModel):
    detail: Any = Field(description="A message, or FastAPI's list of validation errors (without input values).")
    code: str = Field(description="Stable UPPER_SNAKE error code; see the README's table.")


class TokenErrorResponse(ErrorResponse):
    error: str = Field(description="RFC 6749 §5.2 error: invalid_request, invalid_grant, unsupported_grant_type.")
    error_description: str


# --- users -----------------------------------------------------------------------------


class UserCreate(SQLModel):
    email: Email = Field(schema_extra={"examples": ["ada@example.com"]})
    password: Password = Field(schema_extra={"examples": ["correct horse battery staple"]})
    full_name: Text | None = Field(default=None, schema_extra={"examples": ["Ada Lovelace"]})


class UserPublic(UserBase):
    id: uuid.UUID
    is_active: bool
    is_verified: bool
    is_superuser: bool
    mfa_enabled: bool = False
    roles: list[str] = []
    created_at: datetime
    last_login_at: datetime | None


class UsersPublic(SQLModel):
    data: list[UserPublic]
    count: int


class UserUpdateMe(SQLModel):
    """A new `email` needs `current_password`: a stolen access token must not move the account."""

    email: Email = Field(default=None, schema_extra={"examples": ["ada.king@example.com"]})
    full_name: Text | None = Field(default=None, schema_extra={"examples": ["Ada King"]})
    current_password: Password | None = Field(default=None, description="Required with `email`.")

    @model_validator(mode="after")
    def _email_needs_password(self) -> "UserUpdateMe":
        if "email" in self.model_fields_set and not self.current_password:
            raise ValueError("changing the email needs current_password")
        return self


class UserAdminCreate(UserCreate):
    is_active: bool = True
    is_superuser: bool = False
    is_verified: bool = False


class UserAdminUpdate(SQLModel):
    email: Email = Field(default=None)
    full_name: Text | None = None
    password: Password = Field(default=None)
    is_active: bool = Field(default=None)
    is_superuser: bool = Field(default=None)
    is_verified: bool = Field(default=None)


class PasswordChange(SQLModel):
    current_password: Password
    new_password: Password


class PasswordConfirm(SQLModel):
    password: Password


# --- roles ---------------------------------------------------------------------------

RoleName = Annotated[str, StringConstraints(pattern=r"^[a-z][a-z0-9_.-]{0,63}$")]
Permission = Annotated[str, StringConstraints(pattern=r"^[a-z][a-z0-9_-]{0,31}:[a-z][a-z0-9_-]{0,31}$")]
Permissions = Annotated[list[Permission], Field(max_length=100)]


class RoleCreate(SQLModel):
    """Names: lower-case letters, digits, `_ . -`. Permissions: `area:verb`, e.g. `invoices:read`."""

    name: RoleName = Field(schema_extra={"examples": ["support"]})
    description: Text | None = Field(default=None, schema_extra={"examples": ["Help desk"]})
    permissions: Permissions = Field(default=[], schema_extra={"examples": [["users:read"]]})


class RoleUpdate(SQLModel):
    name: RoleName = Field(default=None)
    description: Text | None = None
    permissions: Permissions = Field(default=None)


class RolePublic(SQLModel):
    id: uuid.UUID
    name: str
    description: str | None
    permissions: list[str]
    created_at: datetime
    updated_at: datetime


class RolesPublic(SQLModel):
    data: list[RolePublic]
    count: int


# --- tokens and sessions ---------------------------------------------------------------


class Token(SQLModel):
    access_token: str
    token_type: str = "bearer"
    expires_in: int = Field(description="Seconds until the access token expires.")
    refresh_token: str | None = Field(default=None, description="Absent for client credentials.")
    scope: str | None = Field(default=None, description="For client credentials: the permissions granted.")


class RefreshRequest(SQLModel):
    refresh_token: Annotated[str, StringConstraints(min_length=1, max_length=512)]


class SessionPublic(SQLModel):
    id: uuid.UUID
    created_at: datetime
    last_used_at: datetime
    expires_at: datetime
    user_agent: str | None
    client_ip: str | None
    current: bool = Field(description="True for the session of the token making this request.")


class SessionsPublic(SQLModel):
    data: list[SessionPublic]
    count: int


class TokenForm(SQLModel):
    """The body of introspection (RFC 7662) and revocation (RFC 7009), form or JSON."""

    token: Annotated[str, StringConstraints(max_length=8192)]
    token_type_hint: Annotated[str, StringConstraints(max_length=64)] | None = None
    client_id: Annotated[str, StringConstraints(max_length=255)] | None = None
    client_secret: Annotated[str, StringConstraints(max_length=255)] | None = None


class IntrospectResponse(SQLModel):
    """RFC 7662: only `active` when the token is not; the claims when it is."""

    active: bool
    sub: str | None = None
    client_id: str | None = Field(default=None, description="For a service client's token.")
    username: str | None = None
    email: str | None = None
    email_verified: bool | None = None
    exp: int | None = None
    iat: int | None = None
    iss: str | None = None
    aud: str | None = None
    jti: str | None = None
    sid: str | None = None
    token_type: str | None = None
    scope: str | None = None
    roles: list[str] | None = None
    permissions: list[str] | None = None
    amr: list[str] | None = Field(
        default=None, description="How the user logged in: pwd, and otp with a second factor."
    )


# --- two-factor authentication -----------------------------------------------------------

OtpCode = Annotated[str, StringConstraints(strip_whitespace=True, min_length=1, max_length=64)]


class MfaEnrol(SQLModel):
    current_password: Password


class MfaEnrolment(SQLModel):
    """Add `secret` to an authenticator app (or scan `qr_code`), then confirm with a code."""

    secret: str = Field(description="Base32, for typing into the app. Shown only now.")
    otpauth_uri: str = Field(description="The otpauth:// URI the QR code holds.")
    qr_code: str = Field(
        description="The QR code as an SVG data URI (the same POST with `Accept: image/png` gives a PNG)."
    )


class MfaCode(SQLModel):
    code: OtpCode = Field(schema_extra={"examples": ["123456"]})


class MfaConfirm(SQLModel):
    """The password and a current code (a TOTP code, or a recovery code)."""

    password: Password
    code: OtpCode = Field(schema_extra={"examples": ["123456"]})


class RecoveryCodes(SQLModel):
    recovery_codes: list[str] = Field(description="Each works once. Shown only now: keep them safe.")


class MfaStatus(SQLModel):
    enabled: bool
    enabled_at: datetime | None
    pending: bool = Field(description="An enrolment was started and not yet confirmed.")
    recovery_codes_left: int


# --- service clients ---------------------------------------------------------------------

ClientName = Annotated[Text, StringConstraints(min_length=1)]


class ClientCreate(SQLModel):
    name: ClientName = Field(schema_extra={"examples": ["billing service"]})
    permissions: Permissions = Field(default=[], schema_extra={"examples": [["users:read"]]})


class ClientUpdate(SQLModel):
    name: ClientName = Field(default=None)
    permissions: Permissions = Field(default=None)
    is_active: bool = Field(default=None)


class ClientPublic(SQLModel):
    client_id: str
    name: str
    permissions: list[str]
    is_active: bool
    created_at: datetime
    updated_at: datetime
    last_used_at: datetime | None


class ClientWithSecret(ClientPublic):
    client_secret: str = Field(description="Shown once: only its hash is kept.")


class ClientsPublic(SQLModel):
    data: list[ClientPublic]
    count: int


# --- email verification and password reset --------------------------------------------

OneTimeSecret = Annotated[str, StringConstraints(min_length=1, max_length=512)]


class Message(SQLModel):
    detail: str


class TokenSubmit(SQLModel):
    token: OneTimeSecret


class PasswordResetRequest(SQLModel):
    email: Email = Field(schema_extra={"examples": ["ada@example.com"]})


class PasswordResetConfirm(SQLModel):
    token: OneTimeSecret
    new_password: Password


# --- audit -------------------------------------------------------------------------------

EventType = Annotated[str, StringConstraints(pattern=r"^[a-z_]{1,30}\.[a-z_]{1,30}$")]


class AuditEventPublic(SQLModel):
    id: int
    at: datetime
    type: str
    actor_id: uuid.UUID | None
    subject_id: uuid.UUID | None
    client_ip: str | None
    user_agent: str | None
    request_id: str | None
    details: dict[str, Any]


class AuditEventsPublic(SQLModel):
    data: list[AuditEventPublic]
    count: int


# --- health ----------------------------------------------------------------------------


class Health(SQLModel):
    status: str
    version: str


class Readiness(SQLModel):
    status: str
    database: str
