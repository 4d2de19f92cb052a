"""Argon2id with bounded concurrency: at most HASH_CONCURRENCY hashes at once, a bounded
queue behind them, and 503 past it, while requests that do not hash keep flowing."""

import threading
import time
from typing import Any

import pytest
from fastapi.testclient import TestClient

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


def test_past_the_queue_logins_get_503_and_cheap_requests_flow(
    client: TestClient, user: Account, settings: Settings
) -> None:
    admission = _get_hasher(settings).admission
    held = 6
    for _ in range(held):
        assert admission.acquire(blocking=False)
    try:
        response = client.post("/auth/login", data={"username": user.email, "password": PASSWORD})
        assert response.status_code == 503
        assert response.json()["code"] == "SERVICE_UNAVAILABLE" and response.headers["retry-after"] == "1"
        assert client.get("/users/me", headers=user.headers).status_code == 200
    finally:
        for _ in range(held):
            admission.release()
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
