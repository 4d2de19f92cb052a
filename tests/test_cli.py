"""`python -m auth_service create-admin` and `prune`, run as an operator would."""

import subprocess
import sys
from typing import Any

from fastapi.testclient import TestClient

from tests.conftest import ROOT, login, service_env

ADMIN_PASSWORD = "a strong admin password"


def run(database_url: str, *args: str, **env: str) -> subprocess.CompletedProcess[str]:
    command = [sys.executable, "-m", "auth_service", *args]
    environment = service_env(database_url, **env)
    return subprocess.run(
        command, cwd=ROOT, env=environment, capture_output=True, text=True, timeout=60, stdin=subprocess.DEVNULL
    )


def test_create_admin_then_log_in(client: TestClient, database_url: str) -> None:
    result = run(database_url, "create-admin", "--email", "Root@Example.com", "--password", ADMIN_PASSWORD)
    assert result.returncode == 0, result.stderr
    assert "created" in result.stdout and ADMIN_PASSWORD not in result.stdout + result.stderr
    tokens = login(client, "root@example.com", ADMIN_PASSWORD)
    me = client.get("/users/me", headers={"Authorization": f"Bearer {tokens['access_token']}"}).json()
    assert me["is_superuser"] is True and me["is_verified"] is True
    again = run(database_url, "create-admin", "--email", "root@example.com", "--password", ADMIN_PASSWORD)
    assert again.returncode == 0


def test_create_admin_password_from_the_environment(client: TestClient, database_url: str) -> None:
    result = run(database_url, "create-admin", "--email", "ops@example.com", ADMIN_PASSWORD=ADMIN_PASSWORD)
    assert result.returncode == 0, result.stderr
    login(client, "ops@example.com", ADMIN_PASSWORD)


def test_create_admin_refuses_weak_passwords_and_missing_input(client: TestClient, database_url: str) -> None:
    weak = run(database_url, "create-admin", "--email", "ops@example.com", "--password", "password")
    assert weak.returncode != 0 and "too common" in weak.stderr
    no_password = run(database_url, "create-admin", "--email", "ops@example.com")
    assert no_password.returncode != 0 and "password" in no_password.stderr
    bad_email = run(database_url, "create-admin", "--email", "nope", "--password", ADMIN_PASSWORD)
    assert bad_email.returncode != 0 and "error" in bad_email.stderr


def test_prune(client: TestClient, database_url: str) -> None:
    result: Any = run(database_url, "prune")
    assert result.returncode == 0, result.stderr
    assert result.stdout.startswith("pruned ") and "sessions" in result.stdout
