"""Settings: SECRET_KEY rules, the development key kept beside the database, limits."""

import multiprocessing
import os
import stat
import threading
from pathlib import Path

import pytest
from pydantic import ValidationError

from auth_service.config import DatabaseSettings, Limit, Settings, load_or_create_dev_secret, load_settings

GOOD_KEY = "Zq3vN8-kLw2pR7sT_yB4mX9cH1dF6gJ0"  # 32 bytes, 32 different characters


@pytest.fixture(autouse=True)
def clean_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    """Only what a test passes counts: no SECRET_KEY, ENVIRONMENT, ... from the shell running the suite."""
    for name in Settings.model_fields:
        monkeypatch.delenv(name.upper(), raising=False)


def settings(**values: object) -> Settings:
    return Settings(_env_file=None, **values)  # type: ignore[arg-type]


@pytest.mark.parametrize("environment", ["production", "test"])
def test_secret_key_is_required_outside_development(environment: str, tmp_path: Path) -> None:
    with pytest.raises(ValidationError, match="SECRET_KEY"):
        settings(environment=environment, database_url=f"sqlite:///{tmp_path / 'auth.db'}")
    assert not (tmp_path / ".auth_secret_key").exists()  # no key is made up outside development


def test_secret_key_from_the_environment_in_production(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("ENVIRONMENT", "production")
    with pytest.raises(ValidationError, match="SECRET_KEY"):
        settings()
    monkeypatch.setenv("SECRET_KEY", GOOD_KEY)
    assert settings().secret == GOOD_KEY


@pytest.mark.parametrize(
    "key",
    [
        "0123456789",
        "short-key",
        "changethis",
        "CHANGETHIS",
        "secret",
        "x" * 31,
        "é" * 15,
        "",
        "a" * 40,  # long enough, but one character
        "changemechangemechangemechangemechangeme",
        "your-secret-key-here-please-change-it-now",
        "0123456012345601234560123456012345601234",  # seven different characters
        "PLACEHOLDER-for-the-production-key-0123456789",
    ],
)
def test_weak_or_placeholder_keys_refused_in_production(key: str) -> None:
    with pytest.raises(ValidationError, match="SECRET_KEY"):
        settings(environment="production", secret_key=key)


def test_a_good_key_is_accepted_and_never_shown() -> None:
    production = settings(environment="production", secret_key=GOOD_KEY)
    assert production.secret == GOOD_KEY
    assert GOOD_KEY not in repr(production) and GOOD_KEY not in str(production.model_dump())
    assert settings(environment="production", secret_key=GOOD_KEY).secret == GOOD_KEY  # 32 bytes is enough


def test_development_key_is_made_once_beside_the_database(tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path / 'data' / 'auth.db'}"
    first = settings(database_url=url)
    key_file = tmp_path / "data" / ".auth_secret_key"
    assert key_file.exists() and len(first.secret) >= 43
    assert len(first.secret.encode()) >= 32
    assert stat.S_IMODE(key_file.stat().st_mode) == 0o600
    assert key_file.read_text().strip() == first.secret
    assert settings(database_url=url).secret == first.secret  # a restart, or another worker
    assert settings(database_url=url, environment="development").secret == first.secret
    # another database elsewhere gets a key of its own
    other = settings(database_url=f"sqlite:///{tmp_path / 'other' / 'auth.db'}")
    assert other.secret != first.secret


def test_an_explicit_key_wins_in_development(tmp_path: Path) -> None:
    values = settings(database_url=f"sqlite:///{tmp_path / 'auth.db'}", secret_key=GOOD_KEY)
    assert values.secret == GOOD_KEY
    assert not (tmp_path / ".auth_secret_key").exists()


def test_racing_threads_agree_on_one_key(tmp_path: Path) -> None:
    path = tmp_path / ".auth_secret_key"
    keys: list[str] = []
    barrier = threading.Barrier(8)

    def worker() -> None:
        barrier.wait()
        keys.append(load_or_create_dev_secret(path))

    threads = [threading.Thread(target=worker) for _ in range(8)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert len(keys) == 8 and len(set(keys)) == 1 and keys[0]
    assert [p.name for p in tmp_path.iterdir()] == [".auth_secret_key"]  # no temporary files left


def _race_for_the_key(path: Path, barrier: threading.Barrier, results: "multiprocessing.Queue[str]") -> None:
    barrier.wait(timeout=10)
    results.put(load_or_create_dev_secret(path))


def test_racing_processes_agree_on_one_key(tmp_path: Path) -> None:
    """Several uvicorn workers starting at once: one key for all of them."""
    context = multiprocessing.get_context("fork")
    path = tmp_path / "data" / ".auth_secret_key"
    barrier = context.Barrier(6)
    results: multiprocessing.Queue[str] = context.Queue()
    processes = [context.Process(target=_race_for_the_key, args=(path, barrier, results)) for _ in range(6)]
    for process in processes:
        process.start()
    keys = [results.get(timeout=20) for _ in processes]
    for process in processes:
        process.join(timeout=10)
        assert process.exitcode == 0
    assert len(set(keys)) == 1 and keys[0] == path.read_text().strip()
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert [p.name for p in path.parent.iterdir()] == [".auth_secret_key"]


def test_rate_limit_syntax() -> None:
    values = settings(secret_key=GOOD_KEY, signup_ip_limit="3/2minutes", mail_email_limit="off")
    assert values.signup_ip_limit == Limit(3, 120) and values.mail_email_limit is None
    with pytest.raises(ValidationError, match="rate limit"):
        settings(secret_key=GOOD_KEY, signup_ip_limit="lots")


def test_comma_separated_lists(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(os.environ, "CORS_ORIGINS", "https://a.example, https://b.example")
    assert settings(secret_key=GOOD_KEY).cors_origins == ["https://a.example", "https://b.example"]


def test_max_body_bytes_defaults_to_64_kib() -> None:
    assert settings(secret_key=GOOD_KEY).max_body_bytes == 64 * 1024


# --- empty values, SMTP, and secrets never quoted ---------------------------------------

SECRETS = {
    "SECRET_KEY": "weak-but-private-key",
    "SMTP_PASSWORD": "smtp-password-1234",
    "WEBHOOK_SECRET": "webhook-secret-5678",
    "METRICS_TOKEN": "metrics-token-9012",
    "FIRST_SUPERUSER_PASSWORD": "first-superuser-password-3456",
}


def test_empty_environment_values_count_as_unset(monkeypatch: pytest.MonkeyPatch) -> None:
    """`SMTP_HOST: ${SMTP_HOST:-}` in a compose file passes "": that is the default, not an empty host."""
    for name in ("SMTP_HOST", "SMTP_PORT", "LOGIN_IP_LIMIT", "CORS_ORIGINS", "METRICS", "EMAIL_FROM"):
        monkeypatch.setenv(name, "")
    values = settings(secret_key=GOOD_KEY)
    assert values.smtp_host is None and values.smtp_port == 25
    assert values.login_ip_limit == Limit(1000, 900)  # not "off"
    assert values.cors_origins == [] and values.metrics is None
    assert values.email_from == Settings.model_fields["email_from"].default
    monkeypatch.setenv("ENVIRONMENT", "production")
    monkeypatch.setenv("SECRET_KEY", "")
    with pytest.raises(ValidationError, match="SECRET_KEY is required"):
        settings()


def test_lists_and_proxies_are_read_as_before(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("FORWARDED_ALLOW_IPS", "10.0.0.1, 10.0.1.0/24")
    monkeypatch.setenv("WEBHOOK_URLS", "https://hooks.example/a")
    monkeypatch.setenv("SMTP_HOST", "mail.example")
    values = settings(secret_key=GOOD_KEY)
    assert values.forwarded_allow_ips == ["10.0.0.1", "10.0.1.0/24"]
    assert values.webhook_urls == ["https://hooks.example/a"]
    assert values.smtp_host == "mail.example"


def test_smtp_without_a_host_is_refused_in_production(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("SMTP_HOST", "")
    with pytest.raises(ValidationError, match="SMTP_HOST"):
        settings(environment="production", secret_key=GOOD_KEY, email_backend="smtp")
    monkeypatch.setenv("SMTP_HOST", "   ")  # blank is empty too
    with pytest.raises(ValidationError, match="SMTP_HOST"):
        settings(environment="production", secret_key=GOOD_KEY, email_backend="smtp")
    monkeypatch.setenv("SMTP_HOST", " mail.example ")
    assert settings(secret_key=GOOD_KEY).smtp_host == "mail.example"
    monkeypatch.setenv("SMTP_HOST", "")
    production = settings(environment="production", secret_key=GOOD_KEY, email_backend="smtp", smtp_host="mail.example")
    assert production.smtp_host == "mail.example"
    assert settings(environment="production", secret_key=GOOD_KEY, email_backend="console").smtp_host is None
    assert settings(secret_key=GOOD_KEY, email_backend="smtp").smtp_host is None  # development: a warning at start


def test_no_secret_is_quoted_in_a_settings_error(monkeypatch: pytest.MonkeyPatch) -> None:
    """Every secret set, and several settings wrong: neither the exception nor the one-line
    message of load_settings quotes a secret (pydantic would, as `input_value=`)."""
    for name, value in SECRETS.items():
        monkeypatch.setenv(name, value)
    monkeypatch.setenv("ENVIRONMENT", "production")
    monkeypatch.setenv("DATABASE_URL", "postgresql+psycopg2://auth:db-password-7890@db:5432/auth")
    for broken in ({}, {"SMTP_PORT": "not-a-port"}, {"METRICS": "token", "METRICS_TOKEN": ""}):
        for name, value in broken.items():
            monkeypatch.setenv(name, value)
        with pytest.raises(ValidationError) as caught:
            settings()
        with pytest.raises(SystemExit) as stopped:
            load_settings(Settings)
        shown = f"{caught.value}\n{caught.value!r}\n{stopped.value.code}"
        for secret in [*SECRETS.values(), "db-password-7890"]:
            assert secret not in shown
        assert str(stopped.value.code).startswith("error: invalid settings: ") and "\n" not in str(stopped.value.code)


def test_a_weak_key_message_says_how_to_make_one() -> None:
    with pytest.raises(ValidationError) as caught:
        settings(environment="production", secret_key="short")
    assert "secrets.token_urlsafe(48)" in str(caught.value) and "'short'" not in str(caught.value)


@pytest.mark.parametrize("url", ["postgres//auth:db-password-7890@db/auth", "nosuchdb://auth:db-password-7890@db/auth"])
def test_a_malformed_database_url_is_refused_without_quoting_it(url: str) -> None:
    with pytest.raises(ValidationError, match="DATABASE_URL") as caught:
        DatabaseSettings(_env_file=None, database_url=url)
    assert "db-password-7890" not in str(caught.value)


@pytest.mark.parametrize("scheme", ["postgres", "postgresql", "postgresql+psycopg2"])
def test_a_bare_postgres_url_gets_the_driver_we_install(scheme: str) -> None:
    """SQLAlchemy 2.1 maps a bare scheme to psycopg 3, which is not installed."""
    url = DatabaseSettings(_env_file=None, database_url=f"{scheme}://auth:p%40ss@db:5432/auth").database_url
    assert url == "postgresql+psycopg2://auth:p%40ss@db:5432/auth"


def test_database_wait_seconds() -> None:
    assert DatabaseSettings(_env_file=None).database_wait_seconds == 60
    with pytest.raises(ValidationError, match="database_wait_seconds"):
        DatabaseSettings(_env_file=None, database_wait_seconds=-1)


@pytest.mark.parametrize(
    "url",
    [
        "postgresql+asyncpg://auth:db-password-7890@db/auth",
        "mysql://auth:db-password-7890@db/auth",
        "postgres+psycopg2://auth:db-password-7890@db/auth",
        "mysql+psycopg2://auth:db-password-7890@db/auth",
        "mssql+pysqlite:///./auth.db",
    ],
)
def test_a_database_we_do_not_drive_is_refused_in_one_line(url: str) -> None:
    with pytest.raises(ValidationError, match="DATABASE_URL") as caught:
        DatabaseSettings(_env_file=None, database_url=url)
    assert "db-password-7890" not in str(caught.value) and "postgresql+psycopg2" in str(caught.value)


def test_first_superuser_email_and_password_go_together() -> None:
    fine = settings(
        secret_key=GOOD_KEY, first_superuser_email="root@example.com", first_superuser_password="a long admin password"
    )
    assert fine.warnings() == []
    half = settings(secret_key=GOOD_KEY, first_superuser_email="root@example.com")
    assert any("FIRST_SUPERUSER_PASSWORD" in warning for warning in half.warnings())
