"""Brute-force throttling and rate limits, with state in the database: lockout with
Retry-After and recovery, per-IP limits, and two server processes sharing one limit."""

import subprocess
import sys
from collections.abc import Iterator
from datetime import timedelta
from typing import Any

import httpx
import pytest
from fastapi.testclient import TestClient
from sqlalchemy import update
from sqlmodel import Session, col, select

from auth_service.models import RateLimit, utcnow
from auth_service.throttle import prune
from tests.conftest import PASSWORD, ROOT, LiveServer, free_port, login, service_env, signup, wait_until_healthy


def attempt(client: TestClient, email: str, password: str) -> httpx.Response:
    response: httpx.Response = client.post("/auth/login", data={"username": email, "password": password})
    return response


def fail(client: TestClient, email: str, times: int) -> None:
    for _ in range(times):
        assert attempt(client, email, "wrong password").status_code == 400


def unlock(db: Session) -> None:
    db.exec(update(RateLimit).values(locked_until=utcnow() - timedelta(seconds=1)))
    db.commit()


def test_lockout_after_five_failures_then_recovery(client: TestClient, db: Session) -> None:
    signup(client, "ada@example.com")
    signup(client, "bob@example.com")
    fail(client, "ada@example.com", 5)

    locked = attempt(client, "ada@example.com", PASSWORD)  # even the right password
    assert locked.status_code == 429
    assert locked.json()["code"] == "RATE_LIMITED"
    assert int(locked.headers["retry-after"]) >= 1
    assert attempt(client, "ada@example.com", "wrong password").status_code == 429
    login(client, "bob@example.com")  # another account from the same IP is unaffected

    row = db.exec(select(RateLimit).where(RateLimit.key == "login-account:ada@example.com")).one()
    assert row.count == 5  # attempts while locked are not counted

    unlock(db)
    login(client, "ada@example.com")  # recovery; a success resets the count
    fail(client, "ada@example.com", 1)
    assert attempt(client, "ada@example.com", PASSWORD).status_code == 200


def test_delay_grows_and_is_capped(client: TestClient, db: Session) -> None:
    signup(client, "ada@example.com")
    fail(client, "ada@example.com", 5)
    first = int(attempt(client, "ada@example.com", PASSWORD).headers["retry-after"])
    unlock(db)
    fail(client, "ada@example.com", 1)
    second = int(attempt(client, "ada@example.com", PASSWORD).headers["retry-after"])
    assert second > first
    ada = col(RateLimit.key) == "login-account:ada@example.com"
    db.exec(update(RateLimit).where(ada).values(count=500, locked_until=None))
    db.commit()
    fail(client, "ada@example.com", 1)
    capped = int(attempt(client, "ada@example.com", PASSWORD).headers["retry-after"])
    assert capped <= 900  # never forever: LOGIN_LOCKOUT_MAX_SECONDS


def test_unknown_emails_lock_the_same_way(client: TestClient) -> None:
    fail(client, "ghost@example.com", 5)
    response = attempt(client, "ghost@example.com", PASSWORD)
    assert response.status_code == 429  # no difference that would reveal the account is missing


@pytest.mark.parametrize("settings_overrides", [{"login_ip_limit": "3/hour"}])
def test_ip_limit_slows_password_spraying(client: TestClient) -> None:
    for name in ("a", "b", "c"):
        signup(client, f"{name}@example.com")
        fail(client, f"{name}@example.com", 1)
    signup(client, "d@example.com")
    response = attempt(client, "d@example.com", PASSWORD)
    assert response.status_code == 429 and "retry-after" in response.headers


@pytest.mark.parametrize("settings_overrides", [{"signup_ip_limit": "2/hour"}])
def test_signup_is_limited_per_ip(client: TestClient) -> None:
    signup(client, "a@example.com")
    signup(client, "b@example.com")
    response = client.post("/auth/signup", json={"email": "c@example.com", "password": PASSWORD})
    assert response.status_code == 429
    assert 1 <= int(response.headers["retry-after"]) <= 3600


@pytest.mark.parametrize("settings_overrides", [{"mail_email_limit": "2/hour"}])
def test_reset_mails_are_limited_per_address(client: TestClient) -> None:
    for email in ("ada@example.com", "ghost@example.com"):  # the same for unknown addresses
        for _ in range(2):
            assert client.post("/auth/password-reset/request", json={"email": email}).status_code == 202
        limited = client.post("/auth/password-reset/request", json={"email": email})
        assert limited.status_code == 429 and limited.json()["code"] == "RATE_LIMITED"


@pytest.mark.parametrize("settings_overrides", [{"mail_ip_limit": "2/hour"}])
def test_reset_requests_are_limited_per_ip(client: TestClient) -> None:
    for i in range(2):
        assert client.post("/auth/password-reset/request", json={"email": f"u{i}@example.com"}).status_code == 202
    assert client.post("/auth/password-reset/request", json={"email": "u9@example.com"}).status_code == 429


@pytest.mark.parametrize(
    "settings_overrides", [{"introspect_ip_limit": "2/minute", "introspection_requires_client": False}]
)
def test_introspection_is_limited_per_ip(client: TestClient) -> None:
    for _ in range(2):
        assert client.post("/auth/introspect", json={"token": "x"}).status_code == 200
    assert client.post("/auth/introspect", json={"token": "x"}).status_code == 429


def test_old_counters_are_pruned(client: TestClient, db: Session, app: Any) -> None:
    fail(client, "ghost@example.com", 1)
    assert prune(app.state.engine) == 0
    db.exec(update(RateLimit).values(window_start=utcnow() - timedelta(days=2)))
    db.commit()
    assert prune(app.state.engine) >= 1
    assert db.exec(select(RateLimit)).all() == []


# --- client IP behind a proxy ----------------------------------------------------------


@pytest.mark.parametrize(
    ("settings_overrides", "expected"),
    [({"forwarded_allow_ips": "127.0.0.1"}, "203.0.113.9"), ({}, "127.0.0.1")],
)
def test_forwarded_for_is_trusted_only_from_configured_proxies(live_server: LiveServer, expected: str) -> None:
    headers = {"X-Forwarded-For": "203.0.113.9"}
    with httpx.Client(base_url=live_server.url, headers=headers) as http:
        http.post("/auth/signup", json={"email": "ada@example.com", "password": PASSWORD})
        tokens = http.post("/auth/login", data={"username": "ada@example.com", "password": PASSWORD}).json()
        sessions = http.get("/auth/sessions", headers={"Authorization": f"Bearer {tokens['access_token']}"}).json()
    assert sessions["data"][0]["client_ip"] == expected


# --- two processes, one limit ----------------------------------------------------------


@pytest.fixture
def two_servers(database_url: str, client: TestClient) -> Iterator[list[str]]:
    """Two uvicorn processes on one database (the `client` fixture emptied it)."""
    env = service_env(database_url, SIGNUP_IP_LIMIT="4/hour", LOG_LEVEL="WARNING")
    ports = [free_port(), free_port()]
    command = [sys.executable, "-m", "uvicorn", "--factory", "auth_service.main:create_app", "--no-access-log"]
    processes = [
        subprocess.Popen([*command, "--port", str(port)], cwd=ROOT, env=env, stderr=subprocess.PIPE) for port in ports
    ]
    urls = [f"http://127.0.0.1:{port}" for port in ports]
    try:
        for url in urls:
            wait_until_healthy(url)
        yield urls
    finally:
        for process in processes:
            process.terminate()
            process.wait(timeout=10)


def test_two_processes_enforce_one_limit(two_servers: list[str]) -> None:
    statuses = []
    for i in range(8):
        url = two_servers[i % 2]  # alternate: each process sees only half the requests
        response = httpx.post(f"{url}/auth/signup", json={"email": f"u{i}@example.com", "password": PASSWORD})
        statuses.append(response.status_code)
    assert statuses == [201, 201, 201, 201, 429, 429, 429, 429]
