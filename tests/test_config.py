"""Settings: SECRET_KEY rules, the development key kept beside the database, limits."""

import multiprocessing
import os
import stat
import threading
from pathlib import Path

import pytest
from pydantic import ValidationError

from auth_service.config import Limit, Settings, load_or_create_dev_secret

GOOD_KEY = "k" * 40


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
    "key", ["0123456789", "short-key", "changethis", "CHANGETHIS", "secret", "x" * 31, "é" * 15, ""]
)
def test_weak_or_placeholder_keys_refused_in_production(key: str) -> None:
    with pytest.raises(ValidationError, match="SECRET_KEY"):
        settings(environment="production", secret_key=key)


def test_a_good_key_is_accepted_and_never_shown() -> None:
    production = settings(environment="production", secret_key=GOOD_KEY)
    assert production.secret == GOOD_KEY
    assert GOOD_KEY not in repr(production) and GOOD_KEY not in str(production.model_dump())
    assert settings(environment="production", secret_key="y" * 32).secret == "y" * 32  # 32 bytes is enough


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
