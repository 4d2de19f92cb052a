"""Races through HTTP, many threads at one instant: one winner, clean losers, never a 5xx.
On SQLite this also shows concurrent writers wait for the lock instead of failing."""

import threading
from collections import Counter
from collections.abc import Callable
from typing import Any

import httpx
from fastapi.testclient import TestClient
from sqlmodel import Session, select

from auth_service.models import User
from tests.conftest import PASSWORD, Account, signup

THREADS = 8


def at_once(action: Callable[[int], httpx.Response]) -> list[httpx.Response]:
    barrier = threading.Barrier(THREADS)
    responses: list[Any] = [None] * THREADS

    def run(i: int) -> None:
        barrier.wait()
        responses[i] = action(i)

    threads = [threading.Thread(target=run, args=(i,)) for i in range(THREADS)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    return responses


def test_same_email_signups_one_wins(client: TestClient, db: Session) -> None:
    body = {"email": "race@example.com", "password": PASSWORD}
    responses = at_once(lambda i: client.post("/auth/signup", json=body))
    statuses = Counter(r.status_code for r in responses)
    assert statuses == {201: 1, 409: THREADS - 1}, statuses
    assert all(r.json()["code"] == "EMAIL_TAKEN" for r in responses if r.status_code == 409)
    assert len(db.exec(select(User).where(User.email == "race@example.com")).all()) == 1


def test_concurrent_refreshes_of_one_token_one_wins(client: TestClient, user: Account) -> None:
    responses = at_once(lambda i: client.post("/auth/refresh", json={"refresh_token": user.refresh_token}))
    statuses = Counter(r.status_code for r in responses)
    assert statuses == {200: 1, 401: THREADS - 1}, statuses
    assert all(r.json()["error"] == "invalid_grant" for r in responses if r.status_code == 401)


def test_concurrent_logins_and_signups_all_succeed(client: TestClient) -> None:
    for i in range(THREADS):
        signup(client, f"user{i}@example.com")
    logins = at_once(
        lambda i: client.post("/auth/login", data={"username": f"user{i}@example.com", "password": PASSWORD})
    )
    assert [r.status_code for r in logins] == [200] * THREADS
    same_user = at_once(
        lambda i: client.post("/auth/login", data={"username": "user0@example.com", "password": PASSWORD})
    )
    # One account's checks in flight are bounded (LOGIN_MAX_FAILURES + HASH_CONCURRENCY, 7
    # here): past it, 429 at once. Never a 5xx.
    statuses = Counter(r.status_code for r in same_user)
    assert set(statuses) <= {200, 429} and statuses[200] >= min(THREADS, 5 + 2), statuses
    signups = at_once(
        lambda i: client.post("/auth/signup", json={"email": f"new{i}@example.com", "password": PASSWORD})
    )
    assert [r.status_code for r in signups] == [201] * THREADS
