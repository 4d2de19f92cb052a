"""Settings, read once from the environment and `.env`.

Every setting is listed with its default in the README. Secrets are `SecretStr` so
they never show up in a repr, a log line or a traceback, and validation errors never
quote what was given (`hide_input_in_errors`): a rejected SECRET_KEY is still a secret.
"""

import contextlib
import os
import re
import secrets
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Annotated, Literal, TypeVar

from pydantic import BeforeValidator, DirectoryPath, Field, SecretStr, ValidationError, field_validator, model_validator
from pydantic_settings import BaseSettings, NoDecode, SettingsConfigDict
from sqlalchemy.engine import make_url
from sqlalchemy.exc import ArgumentError, NoSuchModuleError

MIN_SECRET_BYTES = 32
# A random key of 32 bytes or more has dozens of different characters; a typed one may not.
MIN_SECRET_CHARACTERS = 8
PLACEHOLDER_MARKS = (
    "changeme",
    "change-me",
    "change_me",
    "changethis",
    "change-this",
    "change-it",
    "your-secret",
    "placeholder",
)
SECRET_KEY_FILE = ".auth_secret_key"
MAKE_A_KEY = """python -c 'import secrets; print(secrets.token_urlsafe(48))'"""


UNITS = {"second": 1, "minute": 60, "hour": 3600, "day": 86400}
LIMIT_PATTERN = re.compile(r"^\s*(\d+)\s*/\s*(\d*)\s*(second|minute|hour|day)s?\s*$")


@dataclass(frozen=True)
class Limit:
    """At most `count` hits per `seconds`."""

    count: int
    seconds: int


def parse_limit(value: object) -> object:
    """ "5/hour", "100/15minutes", or "off"."""
    if not isinstance(value, str):
        return value
    if value.strip().lower() in ("off", "0", ""):
        return None
    match = LIMIT_PATTERN.match(value.lower())
    if not match:
        raise ValueError(f"not a rate limit: {value!r} (write it like 5/hour or 100/15minutes, or off)")
    count, multiple, unit = match.groups()
    return Limit(int(count), int(multiple or 1) * UNITS[unit])


RateLimitSetting = Annotated[Limit | None, BeforeValidator(parse_limit)]


def with_our_postgres_driver(url: str) -> str:
    """Give a bare postgres:// or postgresql:// URL (what hosts hand out) the psycopg2 driver.

    SQLAlchemy 2.1 maps a bare scheme to psycopg 3, which we do not install.
    """
    scheme, separator, rest = url.partition("://")
    if separator and scheme in ("postgres", "postgresql"):
        return f"postgresql+psycopg2://{rest}"
    return url


class DatabaseSettings(BaseSettings):
    """Just the database, for Alembic: migrating needs no secret key."""

    # env_ignore_empty: `SMTP_HOST: ${SMTP_HOST:-}` in a compose file means "not set", not "".
    model_config = SettingsConfigDict(env_file=".env", extra="ignore", env_ignore_empty=True, hide_input_in_errors=True)

    database_url: str = "sqlite:///./auth.db"
    database_pool_size: int = Field(default=10, ge=1)
    # Connections past the pool are closed when handed back: under steady load that is a
    # new PostgreSQL backend per request. Requests rather wait a moment for a pooled one.
    database_max_overflow: int = Field(default=0, ge=0)
    # PostgreSQL plans the per-request query once per connection; off behind PgBouncer in
    # transaction mode, which cannot keep a prepared statement on one connection.
    database_prepared_statements: bool = True
    # PostgreSQL: the non-blocking connections of each worker's per-request principal read.
    database_read_connections: int = Field(default=4, ge=1)
    database_read_timeout_seconds: float = Field(default=10.0, gt=0)
    database_wait_seconds: float = Field(default=60, ge=0)

    @field_validator("database_url")
    @classmethod
    def _check_database_url(cls, value: str) -> str:
        """Refuse a malformed URL, or one for a driver we do not install, here: SQLAlchemy's
        own error would quote it, password and all, or come later as a traceback."""
        value = with_our_postgres_driver(value)
        try:
            url = make_url(value)
            url.get_dialect()  # loads it: an unknown name fails here, not later with a traceback
            ours = (url.get_backend_name(), url.get_driver_name()) in (
                ("postgresql", "psycopg2"),
                ("sqlite", "pysqlite"),
            )
        except (ArgumentError, NoSuchModuleError, ValueError):
            ours = False
        if not ours:
            raise ValueError(
                "DATABASE_URL must be a PostgreSQL or SQLite URL, like "
                "postgresql+psycopg2://user:password@host:5432/name or sqlite:///./auth.db"
            )
        return value


class Settings(DatabaseSettings):
    environment: Literal["development", "production", "test"] = "development"
    secret_key: SecretStr | None = None

    jwt_algorithm: Literal["ES256", "RS256", "HS256", "HS384", "HS512"] = "ES256"
    jwt_issuer: str = "auth_service"
    jwt_audience: str = "auth_service"
    access_token_expire_minutes: int = Field(default=30, ge=1)
    refresh_token_expire_days: int = Field(default=7, ge=1)
    refresh_reuse_grace_seconds: int = Field(default=0, ge=0, le=300)
    session_max_days: int = Field(default=30, ge=1)
    session_retention_days: int = Field(default=30, ge=0)

    introspection_requires_client: bool = True
    mfa_issuer: str | None = None  # the name authenticator apps show; PRODUCT_NAME when unset
    mfa_token_minutes: int = Field(default=5, ge=1, le=60)
    mfa_required_for_superusers: bool = False
    allow_signup: bool = True
    require_verified_email: bool = False

    password_min_length: int = Field(default=8, ge=1, le=128)
    password_require_uppercase: bool = False
    password_require_digit: bool = False
    password_require_symbol: bool = False
    argon2_time_cost: int = Field(default=3, ge=1)
    argon2_memory_cost: int = Field(default=65536, ge=8)
    # One lane per hash, one core per hash: HASH_CONCURRENCY hashes run side by side, each
    # at full speed (pwdlib's profile has 4 lanes, which on a small machine only fight).
    argon2_parallelism: int = Field(default=1, ge=1)
    # All cores but one, so a login flood leaves a core for every other request.
    hash_concurrency: int = Field(default_factory=lambda: max(1, (os.cpu_count() or 2) - 1), ge=1)
    # Logins that may wait for a hash; past it, 503 at once. Unset: 8 per hashing slot, so
    # the wait stays near a second instead of growing with the flood.
    hash_queue_limit: int | None = Field(default=None, ge=1)

    product_name: str = Field(default="auth_service", min_length=1, max_length=100)
    templates_dir: DirectoryPath | None = None
    docs_enabled: bool = True

    public_url: str = "http://127.0.0.1:8000"
    verify_email_url: str = "{public_url}/verify-email?token={token}"
    password_reset_url: str = "{public_url}/reset-password?token={token}"
    email_verify_token_hours: int = Field(default=24, ge=1)
    password_reset_token_minutes: int = Field(default=60, ge=1)
    email_backend: Literal["console", "smtp"] = "console"
    email_from: str = "auth_service <no-reply@localhost>"
    smtp_host: str | None = None
    smtp_port: int = Field(default=25, ge=1, le=65535)
    smtp_username: str | None = None
    smtp_password: SecretStr | None = None
    smtp_starttls: bool = False
    smtp_ssl: bool = False
    smtp_timeout: float = Field(default=10.0, gt=0)
    outbox_worker: bool = True
    outbox_poll_seconds: float = Field(default=1.0, gt=0)

    webhook_urls: Annotated[list[str], NoDecode] = []
    webhook_secret: SecretStr | None = None
    webhook_timeout: float = Field(default=5.0, gt=0)
    audit_retention_days: int = Field(default=365, ge=1)

    login_max_failures: int = Field(default=5, ge=1)
    login_lockout_base_seconds: int = Field(default=1, ge=1)
    login_lockout_max_seconds: int = Field(default=900, ge=1)
    login_failure_reset_seconds: int = Field(default=43200, ge=1)
    login_ip_limit: RateLimitSetting = Field(default="1000/15minutes", validate_default=True)
    signup_ip_limit: RateLimitSetting = Field(default="1000/hour", validate_default=True)
    mail_email_limit: RateLimitSetting = Field(default="5/hour", validate_default=True)
    mail_ip_limit: RateLimitSetting = Field(default="200/hour", validate_default=True)
    introspect_ip_limit: RateLimitSetting = Field(default="6000/minute", validate_default=True)
    email_change_limit: RateLimitSetting = Field(default="5/day", validate_default=True)

    first_superuser_email: str | None = None
    first_superuser_password: SecretStr | None = None

    cors_origins: Annotated[list[str], NoDecode] = []
    forwarded_allow_ips: Annotated[list[str], NoDecode] = []
    max_body_bytes: int = Field(default=65536, ge=1024)
    log_level: Literal["DEBUG", "INFO", "WARNING", "ERROR", "CRITICAL", "debug", "info", "warning", "error"] = "INFO"
    log_format: Literal["text", "json"] = "text"
    metrics: Literal["off", "open", "token"] | None = None
    metrics_token: SecretStr | None = None

    @field_validator("smtp_host", mode="before")
    @classmethod
    def _blank_host_is_unset(cls, value: object) -> object:
        if isinstance(value, str):
            return value.strip() or None
        return value

    @field_validator("cors_origins", "forwarded_allow_ips", "webhook_urls", mode="before")
    @classmethod
    def _split_commas(cls, value: object) -> object:
        if isinstance(value, str):
            return [item.strip() for item in value.split(",") if item.strip()]
        return value

    @model_validator(mode="after")
    def _check_metrics_token(self) -> "Settings":
        if self.metrics == "token" and not (self.metrics_token and self.metrics_token.get_secret_value()):
            raise ValueError("METRICS=token needs METRICS_TOKEN")
        return self

    @model_validator(mode="after")
    def _check_smtp_host(self) -> "Settings":
        """An SMTP backend without a server would fail every mail at send time: say so at start-up."""
        if self.environment == "production" and self.email_backend == "smtp" and not self.smtp_host:
            raise ValueError("EMAIL_BACKEND=smtp needs SMTP_HOST (the mail server's host name)")
        return self

    @property
    def hash_queue(self) -> int:
        """HASH_QUEUE_LIMIT, or 8 per hashing slot when unset."""
        return self.hash_queue_limit or 8 * self.hash_concurrency

    @model_validator(mode="after")
    def _check_templates(self) -> "Settings":
        """A template override that cannot render fails here, at start-up, not in a mail."""
        from auth_service.templating import override_problems  # jinja2 only when overriding

        if self.templates_dir is not None and (problems := override_problems(self.templates_dir)):
            raise ValueError(f"TEMPLATES_DIR has a template that cannot render: {problems[0]}")
        return self

    @model_validator(mode="after")
    def _check_proxies(self) -> "Settings":
        if self.environment == "production" and "*" in self.forwarded_allow_ips:
            raise ValueError("FORWARDED_ALLOW_IPS=* lets any client forge its address; name your proxies")
        return self

    def warnings(self) -> list[str]:
        """What start-up logs as a warning: allowed, but probably not meant."""
        found = []
        if self.secret_key is not None and len(self.secret.encode()) < MIN_SECRET_BYTES:
            found.append(f"SECRET_KEY is shorter than {MIN_SECRET_BYTES} bytes; tokens are only as strong as it")
        if self.email_backend == "smtp" and not (self.smtp_starttls or self.smtp_ssl):
            found.append(
                "SMTP without TLS (SMTP_STARTTLS or SMTP_SSL): mails with live links cross the network in clear"
            )
        if self.email_backend == "smtp" and not self.smtp_host:  # refused in production
            found.append("EMAIL_BACKEND=smtp without SMTP_HOST: no mail can be sent")
        if self.environment == "production" and self.email_backend == "console":
            found.append("EMAIL_BACKEND=console in production: mails, with their live links, go to the log")
        if bool(self.first_superuser_email) != bool(self.first_superuser_password):
            found.append("FIRST_SUPERUSER_EMAIL and FIRST_SUPERUSER_PASSWORD go together: no superuser is created")
        return found

    @model_validator(mode="after")
    def _check_secret_key(self) -> "Settings":
        """Refuse weak keys outside development; in development keep one generated key on disk."""
        make_one = f"make one with: {MAKE_A_KEY}"
        if self.secret_key is None:
            if self.environment != "development":
                raise ValueError(
                    f"SECRET_KEY is required with ENVIRONMENT={self.environment} (at least 32 random bytes): {make_one}"
                    " (or set ENVIRONMENT=development to try the service with a generated key)"
                )
            self.secret_key = SecretStr(load_or_create_dev_secret(self.secret_key_path))
            return self
        key = self.secret_key.get_secret_value()
        weak = (
            len(key.encode()) < MIN_SECRET_BYTES
            or len(set(key)) < MIN_SECRET_CHARACTERS
            or any(mark in key.lower() for mark in PLACEHOLDER_MARKS)
        )
        if weak and self.environment != "development":
            raise ValueError(
                "SECRET_KEY is too weak: it must be at least 32 random bytes, not a typed or placeholder value; "
                + make_one
            )
        return self

    @property
    def metrics_mode(self) -> str:
        """Unset: open in development and test, off in production."""
        return self.metrics or ("off" if self.environment == "production" else "open")

    @property
    def secret(self) -> str:
        assert self.secret_key is not None  # set by the validator
        return self.secret_key.get_secret_value()

    @property
    def is_sqlite(self) -> bool:
        return self.database_url.startswith("sqlite")

    @property
    def secret_key_path(self) -> Path:
        """Beside the SQLite file, so every worker of one deployment finds the same key."""
        if self.is_sqlite:
            database = make_url(self.database_url).database
            if database and database != ":memory:":
                return Path(database).resolve().parent / SECRET_KEY_FILE
        return Path.cwd() / SECRET_KEY_FILE


AnySettings = TypeVar("AnySettings", bound=DatabaseSettings)


def describe_errors(exc: ValidationError) -> str:
    """One line naming each bad setting and what is wrong, never what was given."""
    problems = []
    for error in exc.errors(include_url=False, include_context=False, include_input=False):
        message = error["msg"].removeprefix("Value error, ")
        name = ".".join(str(part) for part in error["loc"]).upper()
        problems.append(f"{name}: {message}" if name and name not in message else message)
    return "; ".join(problems)


def load_settings(cls: type[AnySettings]) -> AnySettings:
    """Read the settings, or stop the process with one clear line (no traceback, no secret):
    the start-up path of the app, the CLI and Alembic alike."""
    try:
        return cls()
    except ValidationError as exc:
        raise SystemExit(f"error: invalid settings: {describe_errors(exc)}") from None
    except OSError as exc:  # the development key beside the database could not be written
        raise SystemExit(f"error: {exc.strerror}: {exc.filename} (is the folder writable by this user?)") from None


def load_or_create_dev_secret(path: Path) -> str:
    """Write a new key to a private temporary file, then hard-link it into place: the link
    fails if the key exists, so racing workers agree on one, and none reads half a file."""
    if not path.exists():
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(prefix=f"{path.name}.", dir=path.parent)  # mode 0600
        try:
            with os.fdopen(fd, "w") as f:
                f.write(secrets.token_urlsafe(48))
            with contextlib.suppress(FileExistsError):
                os.link(tmp, path)
        finally:
            os.unlink(tmp)
    return path.read_text().strip()
