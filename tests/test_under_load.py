"""What only shows when requests come together: lock order, the pool, the hash queue, and
an app's lifetime. (That no request ever waits for a second pooled connection while it
holds one is checked for every test, by the `app` fixture.)"""

import base64
import gc
import json
import threading
import weakref
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import pytest
from fastapi import FastAPI
from fastapi.testclient import TestClient
from sqlalchemy import text
from sqlalchemy.exc import DBAPIError

from auth_service import principals, security, signing_keys, throttle
from auth_service.config import Settings
from auth_service.errors import AppError
from auth_service.main import create_app
from tests.conftest import PASSWORD, Account, make_settings, service


def test_login_checks_never_deadlock_on_their_in_flight_rows(app: FastAPI, settings: Settings) -> None:
    """The start of a check locks the account's row, then the IP's; the end must take them
    in the same order (a multi-row UPDATE takes them in scan order, which the planner picks)."""
    engine = app.state.engine
    throttle.reserve_password_check(engine, settings, "ada@example.com", "10.0.0.1")
    throttle.end_password_check(engine, settings, "ada@example.com", "10.0.0.1", failed=False)
    if engine.dialect.name == "postgresql":
        with engine.connect().execution_options(isolation_level="AUTOCOMMIT") as connection:
            connection.execute(text("ANALYZE rate_limit"))  # what autovacuum does: a sequential scan
    errors: list[str] = []

    def check_and_end() -> None:
        for _ in range(150):
            try:
                throttle.reserve_password_check(engine, settings, "ada@example.com", "10.0.0.1")
            except AppError:  # too many in flight: fine
                continue
            except DBAPIError as exc:
                errors.append(str(exc.orig).splitlines()[0])
                continue
            try:
                throttle.end_password_check(engine, settings, "ada@example.com", "10.0.0.1", failed=False)
            except DBAPIError as exc:
                errors.append(str(exc.orig).splitlines()[0])

    threads = [threading.Thread(target=check_and_end) for _ in range(8)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert errors == []


def forged(kid: str) -> str:
    """A token naming a key we never had: its lookup goes to the database."""

    def part(value: dict[str, Any]) -> str:
        return base64.urlsafe_b64encode(json.dumps(value).encode()).rstrip(b"=").decode()

    return f"{part({'alg': 'ES256', 'kid': kid})}.{part({'sub': 'x'})}.c2ln"


@pytest.mark.parametrize("settings_overrides", [{"database_pool_size": 2}])
def test_anonymous_revocations_cannot_exhaust_the_pool(
    app: FastAPI, client: TestClient, monkeypatch: pytest.MonkeyPatch
) -> None:
    """As many revocations at once as the pool has connections, each with a token whose `kid`
    is looked up: none may hold a connection while it waits for another."""
    app.state.engine.pool._timeout = 3  # 30 s otherwise, then 503s
    together = threading.Barrier(2, timeout=5)
    lookup = signing_keys.public_key

    def public_key(engine: Any, kid: str) -> Any:
        together.wait()  # both requests are here at once
        return lookup(engine, kid)

    monkeypatch.setattr(principals, "public_key", public_key)
    with ThreadPoolExecutor(2) as pool:
        statuses = list(pool.map(lambda i: client.post("/auth/revoke", data={"token": forged(f"no-{i}")}), range(2)))
    assert [answer.status_code for answer in statuses] == [200, 200]


def test_introspecting_an_unknown_key_takes_one_connection_at_a_time(
    client: TestClient, admin: Account, user: Account
) -> None:
    """The client is authenticated on the request's connection; the key is looked up on
    another, so the first must be given back before (the `app` fixture checks it)."""
    credentials = service(client, admin)
    answer = client.post("/auth/introspect", data={"token": forged("never-ours")}, auth=credentials)
    assert answer.status_code == 200 and answer.json() == {"active": False}
    live = client.post("/auth/introspect", data={"token": user.access_token}, auth=credentials)
    assert live.json()["active"] is True


def test_every_login_holds_its_place_in_the_hash_queue_and_gives_it_back(
    client: TestClient, settings: Settings, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The place taken on the event loop is seen by the thread that hashes, so no login
    takes a second one, and every way out (success, failure, unknown name, a form without a password) frees it."""
    hasher = security._get_hasher(settings)
    seen: list[tuple[bool, int]] = []
    turn = security._Hasher.turn

    def watched(self: security._Hasher) -> Any:
        seen.append((security.admitted.get(), self.in_line))
        return turn(self)

    monkeypatch.setattr(security._Hasher, "turn", watched)
    client.post("/auth/signup", json={"email": "ada@example.com", "password": PASSWORD}).raise_for_status()
    seen.clear()
    for password in (PASSWORD, "not the password", PASSWORD):
        client.post("/auth/login", data={"username": "ada@example.com", "password": password})
    client.post("/auth/login", data={"username": "nobody@example.com", "password": PASSWORD})
    assert client.post("/auth/login", data={"username": "ada@example.com"}).status_code == 400  # no password
    assert seen == [(True, 1)] * 4
    assert hasher.in_line == 0


def test_apps_are_freed_after_their_lifespan(database_url: str) -> None:
    """Start-up freezes what it made (out of the collector's way) once per process: the
    first app stays, as in a worker; any later app (the suite makes hundreds) must not."""
    first = create_app(make_settings(database_url))
    with TestClient(first):
        pass
    first.state.engine.dispose()
    app = create_app(make_settings(database_url))
    with TestClient(app):
        pass
    app.state.engine.dispose()
    freed = weakref.ref(app)
    del app
    gc.collect()
    assert freed() is None


def test_a_key_missing_at_start_up_is_made_by_the_first_login(app: FastAPI, client: TestClient) -> None:
    """The database was down at start-up, so there is no signing key yet: the first login
    makes it, in a transaction of its own, after its session handed the connection back."""
    with app.state.engine.begin() as connection:
        connection.execute(text("DELETE FROM signing_key"))
    client.post("/auth/signup", json={"email": "ada@example.com", "password": PASSWORD}).raise_for_status()
    logged_in = client.post("/auth/login", data={"username": "ada@example.com", "password": PASSWORD})
    assert logged_in.status_code == 200
    me = client.get("/users/me", headers={"Authorization": f"Bearer {logged_in.json()['access_token']}"})
    assert me.status_code == 200
