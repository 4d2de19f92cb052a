"""`python -m auth_service create-admin` and `prune`, run as an operator would.

Each command is a real subprocess (a second of imports), so independent commands run
side by side to keep the file fast.
"""

import re
import subprocess
import sys
import uuid
from concurrent.futures import ThreadPoolExecutor
from datetime import timedelta
from pathlib import Path
from typing import Any

import pytest
from alembic import command
from fastapi.testclient import TestClient
from sqlalchemy import create_engine
from sqlmodel import Session, select

from auth_service import cli
from auth_service.accounts import create_user
from auth_service.models import User, UserSession, utcnow
from tests.conftest import PASSWORD, ROOT, TEST_SECRET, alembic_config, login, make_settings, service_env, signup

ADMIN_PASSWORD = "a strong admin password"
Result = subprocess.CompletedProcess[str]


def run(database_url: str, *args: str, **env: str) -> Result:
    """`python -m auth_service ARGS` with DATABASE_URL, ENVIRONMENT=test, the test key, cheap Argon2id."""
    environment = service_env(database_url)
    assert environment["SECRET_KEY"] == TEST_SECRET and environment["ENVIRONMENT"] == "test"
    environment.pop("ADMIN_PASSWORD", None)  # only when a test passes it
    environment.update(env)
    return subprocess.run(
        [sys.executable, "-m", "auth_service", *args],
        cwd=ROOT,
        env=environment,
        capture_output=True,
        text=True,
        timeout=60,
        stdin=subprocess.DEVNULL,
    )


def run_together(*calls: tuple[Any, ...]) -> list[Result]:
    """Several `run(...)` calls at once; each call is (database_url, *args) or (database_url, *args, env)."""

    def one(call: tuple[Any, ...]) -> Result:
        if isinstance(call[-1], dict):
            return run(*call[:-1], **call[-1])
        return run(*call)

    with ThreadPoolExecutor(len(calls)) as pool:
        return list(pool.map(one, calls))


def me(client: TestClient, email: str, password: str) -> dict[str, Any]:
    tokens = login(client, email, password)
    response = client.get("/users/me", headers={"Authorization": f"Bearer {tokens['access_token']}"})
    assert response.status_code == 200, response.text
    body: dict[str, Any] = response.json()
    return body


def test_create_admin_then_log_in(
    client: TestClient,
    database_url: str,
    db: Session,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    by_flag, by_env = run_together(
        (database_url, "create-admin", "--email", "Root@Example.com", "--password", ADMIN_PASSWORD),
        (database_url, "create-admin", "--email", "ops@example.com", {"ADMIN_PASSWORD": ADMIN_PASSWORD}),
    )
    for result in (by_flag, by_env):
        assert result.returncode == 0, result.stderr
        assert "created" in result.stdout
        assert ADMIN_PASSWORD not in result.stdout + result.stderr
    root = me(client, "root@example.com", ADMIN_PASSWORD)
    assert root["email"] == "root@example.com"
    assert root["is_superuser"] is True and root["is_verified"] is True and root["is_active"] is True
    assert me(client, "ops@example.com", ADMIN_PASSWORD)["is_superuser"] is True
    admin_token = login(client, "root@example.com", ADMIN_PASSWORD)["access_token"]
    listing = client.get("/users", headers={"Authorization": f"Bearer {admin_token}"})  # an admin endpoint
    assert listing.status_code == 200 and listing.json()["count"] == 2

    # running it again changes nothing and says so (in-process: the same main() as `python -m auth_service`)
    for name, value in service_env(database_url).items():
        monkeypatch.setenv(name, value)
    with pytest.raises(SystemExit) as refused:
        cli.main(["create-admin", "--email", "root@example.com", "--password", "another admin password"])
    assert "already exists" in str(refused.value) and "--promote-existing" in str(refused.value)
    assert me(client, "root@example.com", ADMIN_PASSWORD)["is_superuser"] is True
    db.expire_all()
    assert len(db.exec(select(User)).all()) == 2  # nobody was duplicated


def test_prune(client: TestClient, database_url: str, db: Session) -> None:
    user = signup(client, "ada@example.com")
    login(client, "ada@example.com")  # a live session, to be kept
    long_ago = utcnow() - timedelta(days=90)
    old = UserSession(user_id=uuid.UUID(user["id"]), created_at=long_ago, last_used_at=long_ago, expires_at=long_ago)
    db.add(old)
    db.commit()
    old_id = old.id

    pruned = run(database_url, "prune")

    assert pruned.returncode == 0, pruned.stderr
    assert pruned.stdout.startswith("pruned ")
    counts = {what: int(n) for n, what in re.findall(r"(\d+) ([a-z -]+?)(?:,|$)", pruned.stdout.strip())}
    assert counts["sessions"] == 1, pruned.stdout
    db.expire_all()
    left = db.exec(select(UserSession)).all()
    assert len(left) == 1 and left[0].id != old_id and left[0].expires_at > utcnow()  # the live one is kept


@pytest.fixture(scope="module")
def side_by_side(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    """The commands that need no shared test database, run at once (a subprocess costs a second):
    refusals, which must stop before even creating their database file; a good command against
    a database nobody migrated; and the promotion of an ordinary account (SQLite, migrated here)."""
    directory = tmp_path_factory.mktemp("cli")
    untouched = f"sqlite:///{directory / 'untouched.db'}"
    squatted = f"sqlite:///{directory / 'squatted.db'}"
    command.upgrade(alembic_config(squatted), "head")
    engine = create_engine(squatted)
    with Session(engine) as session:
        alice = create_user(session, make_settings(squatted), email="alice@example.com", password=PASSWORD)
        alice_hash = alice.hashed_password
    calls = {
        "weak": (untouched, "create-admin", "--email", "ops@example.com", "--password", "password"),
        "no_password": (untouched, "create-admin", "--email", "ops@example.com"),
        "bad_email": (untouched, "create-admin", "--email", "nope", "--password", ADMIN_PASSWORD),
        "unmigrated": (f"sqlite:///{directory / 'unmigrated.db'}", "create-admin", "--email", "ops@example.com",
                       "--password", ADMIN_PASSWORD),
        "squat": (squatted, "create-admin", "--email", "ALICE@example.com", "--password", ADMIN_PASSWORD),
    }  # fmt: skip
    results: dict[str, Any] = dict(zip(calls, run_together(*calls.values()), strict=True))
    results["untouched"] = not Path(untouched.removeprefix("sqlite:///")).exists()
    with Session(engine) as session:
        after = session.exec(select(User)).all()
        results["squatted_users"] = [(u.email, u.is_superuser, u.hashed_password == alice_hash) for u in after]
    engine.dispose()
    return results


def test_create_admin_never_promotes_an_existing_account_implicitly(side_by_side: dict[str, Any]) -> None:
    """Someone signed up first with the admin's address: they must not become superuser."""
    result = side_by_side["squat"]
    assert result.returncode != 0 and "Traceback" not in result.stderr
    assert "already exists" in result.stderr and "--promote-existing" in result.stderr
    assert side_by_side["squatted_users"] == [("alice@example.com", False, True)]


def test_create_admin_promote_existing_takes_the_account_over(client: TestClient, database_url: str) -> None:
    squatter = signup(client, "root@example.com")
    squatter_tokens = login(client, "root@example.com")
    result = run(database_url, "create-admin", "--email", "root@example.com", "--promote-existing",
                 "--password", ADMIN_PASSWORD)  # fmt: skip
    assert result.returncode == 0, result.stderr
    assert "made superuser" in result.stdout and ADMIN_PASSWORD not in result.stdout + result.stderr
    # the squatter's sessions are over, their password no longer works, the admin's does
    old = {"Authorization": f"Bearer {squatter_tokens['access_token']}"}
    assert client.get("/users/me", headers=old).status_code == 401
    refreshed = client.post("/auth/refresh", json={"refresh_token": squatter_tokens["refresh_token"]})
    assert refreshed.status_code == 401
    assert client.post("/auth/login", data={"username": "root@example.com", "password": PASSWORD}).status_code == 400
    root = me(client, "root@example.com", ADMIN_PASSWORD)
    assert root["id"] == squatter["id"] and root["is_superuser"] is True and root["is_verified"] is True


def test_create_admin_refuses_weak_passwords_and_missing_input(side_by_side: dict[str, Any]) -> None:
    weak, no_password, bad_email = side_by_side["weak"], side_by_side["no_password"], side_by_side["bad_email"]
    assert weak.returncode != 0 and "too common" in weak.stderr
    assert no_password.returncode != 0 and "password" in no_password.stderr
    assert bad_email.returncode != 0 and "error" in bad_email.stderr
    for result in (weak, no_password, bad_email):
        assert "Traceback" not in result.stderr, result.stderr
    assert side_by_side["untouched"]  # refused before touching the database


def test_create_admin_before_migrating_says_so(side_by_side: dict[str, Any]) -> None:
    result = side_by_side["unmigrated"]
    assert result.returncode != 0
    assert "Traceback" not in result.stderr and "SELECT" not in result.stderr, result.stderr
    assert "migrat" in result.stderr.lower()
