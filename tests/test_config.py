"""Settings: SECRET_KEY rules, the development key kept beside the database, limits."""

import os
import stat
import threading
from pathlib import Path

import pytest
from pydantic import ValidationError

from auth_service.config import Limit, Settings, load_or_create_dev_secret


def settings(**values: object) -> Settings:
    return Settings(_env_file=None, **values)  # type: ignore[arg-type]


@pytest.mark.parametrize("environment", ["production", "test"])
def test_secret_key_is_required_outside_development(environment: str) -> None:
    with pytest.raises(ValidationError, match="SECRET_KEY"):
        settings(environment=environment)


@pytest.mark.parametrize("key", ["short-key", "changethis", "secret", "x" * 31])
def test_weak_or_placeholder_keys_refused_in_production(key: str) -> None:
    with pytest.raises(ValidationError, match="SECRET_KEY"):
        settings(environment="production", secret_key=key)


def test_a_good_key_is_accepted_and_never_shown() -> None:
    key = "k" * 40
    production = settings(environment="production", secret_key=key)
    assert production.secret == key
    assert key not in repr(production) and key not in str(production.model_dump())


def test_development_key_is_made_once_beside_the_database(tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path / 'data' / 'auth.db'}"
    first = settings(database_url=url)
    key_file = tmp_path / "data" / ".auth_secret_key"
    assert key_file.exists() and len(first.secret) >= 43
    assert stat.S_IMODE(key_file.stat().st_mode) == 0o600
    assert settings(database_url=url).secret == first.secret  # a restart, or another worker


def test_racing_workers_agree_on_one_key(tmp_path: Path) -> None:
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
    assert len(set(keys)) == 1
    assert [p.name for p in tmp_path.iterdir()] == [".auth_secret_key"]  # no temporary files left


def test_rate_limit_syntax() -> None:
    values = settings(secret_key="k" * 40, signup_ip_limit="3/2minutes", mail_email_limit="off")
    assert values.signup_ip_limit == Limit(3, 120) and values.mail_email_limit is None
    with pytest.raises(ValidationError, match="rate limit"):
        settings(secret_key="k" * 40, signup_ip_limit="lots")


def test_comma_separated_lists(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(os.environ, "CORS_ORIGINS", "https://a.example, https://b.example")
    assert settings(secret_key="k" * 40).cors_origins == ["https://a.example", "https://b.example"]
