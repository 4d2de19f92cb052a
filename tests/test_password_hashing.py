"""Argon2id with bounded concurrency: at most HASH_CONCURRENCY hashes at once, a bounded
queue behind them, and 503 past it, while requests that do not hash keep flowing."""

import threading
import time
from typing import Any

import pytest
from fastapi import FastAPI
from fastapi.testclient import TestClient
from sqlalchemy import event

from auth_service.config import Settings
from auth_service.security import _get_hasher, hash_password, verify_password
from tests.conftest import PASSWORD, Account


@pytest.fixture
def settings_overrides() -> dict[str, Any]:
    return {"hash_concurrency": 2, "hash_queue_limit": 6}


def test_at_most_hash_concurrency_hashes_run_at_once(settings: Settings, monkeypatch: pytest.MonkeyPatch) -> None:
    hasher = _get_hasher(settings)
    running = peak = 0
    lock = threading.Lock()
    real_hash = hasher.hash.hash

    def tracked(password: str) -> str:
        nonlocal running, peak
        with lock:
            running += 1
            peak = max(peak, running)
        time.sleep(0.05)
        with lock:
            running -= 1
        return real_hash(password)

    monkeypatch.setattr(hasher.hash, "hash", tracked)
    threads = [threading.Thread(target=hash_password, args=(settings, f"password {i}")) for i in range(6)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert peak == 2


def test_past_the_queue_logins_get_503_at_once_and_cheap_requests_flow(
    client: TestClient, user: Account, settings: Settings, app: FastAPI
) -> None:
    """The queue (HASH_QUEUE_LIMIT=6 here) held by six logins in line: the next is turned
    away with 503 before a single query; /users/me goes on."""
    hasher, release = _get_hasher(settings), threading.Event()

    def in_line() -> None:
        with hasher.turn():
            release.wait(10)

    threads = [threading.Thread(target=in_line) for _ in range(6)]
    for thread in threads:
        thread.start()
    while hasher.in_line < 6:
        time.sleep(0.01)
    statements: list[str] = []
    event.listen(app.state.engine, "before_cursor_execute", lambda _c, _cu, statement, *a: statements.append(statement))
    try:
        response = client.post("/auth/login", data={"username": user.email, "password": PASSWORD})
        assert response.status_code == 503
        assert response.json()["code"] == "SERVICE_UNAVAILABLE" and response.headers["retry-after"] == "1"
        assert statements == []  # shed before any work
        assert client.get("/users/me", headers=user.headers).status_code == 200
    finally:
        release.set()
        for thread in threads:
            thread.join()
    assert client.post("/auth/login", data={"username": user.email, "password": PASSWORD}).status_code == 200


def test_unknown_user_still_spends_a_verification(settings: Settings, monkeypatch: pytest.MonkeyPatch) -> None:
    hasher = _get_hasher(settings)
    calls = []
    real = hasher.hash.verify_and_update

    def counting(password: str, hash: str) -> tuple[bool, str | None]:
        calls.append(hash)
        return real(password, hash)

    monkeypatch.setattr(hasher.hash, "verify_and_update", counting)
    assert verify_password(settings, "anything", None) == (False, None)
    assert len(calls) == 1 and calls[0].startswith("$argon2id$")
