"""The takeover and escalation paths of the outside review (issue 10), each tried as an
attacker would, through HTTP: every test here failed before the fix."""

import re
import threading
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from datetime import timedelta
from typing import Any

import httpx
import pytest
from fastapi import FastAPI
from fastapi.testclient import TestClient
from jose import jwt
from sqlalchemy import update
from sqlmodel import Session, col, select

from auth_service import accounts, credentials, security
from auth_service.config import Settings
from auth_service.main import create_app
from auth_service.models import OutboxMessage, RateLimit, User, UserSession, utcnow
from auth_service.outbox import deliver_due
from tests.conftest import PASSWORD, Account, LiveServer, login, make_settings, register, service
from tests.support import Workers

NEW_PASSWORD = "a brand new passphrase"


def bearer(token: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}"}


def give_role(client: TestClient, admin: Account, account: Account, name: str, permissions: list[str]) -> None:
    created = client.post("/roles", json={"name": name, "permissions": permissions}, headers=admin.headers)
    assert created.status_code in (201, 409), created.text
    assigned = client.post(f"/users/{account.id}/roles/{name}", headers=admin.headers)
    assert assigned.status_code == 200, assigned.text


def relogin(client: TestClient, account: Account) -> Account:
    """Fresh tokens, so the access token carries the account's current permissions."""
    tokens = login(client, account.email, account.password)
    return Account(account.email, account.password, account.id, tokens["access_token"], tokens["refresh_token"])


def mailed_token(db: Session, to: str) -> str:
    """The token in the newest queued (not yet delivered) mail to `to`."""
    db.expire_all()
    mails = db.exec(select(OutboxMessage).where(col(OutboxMessage.kind) == "email")).all()
    mine = [m for m in mails if m.payload.get("to") == to and m.sent_at is None]
    match = re.search(r"token=([A-Za-z0-9_-]+)", max(mine, key=lambda m: m.created_at).payload["text"])
    assert match
    return match.group(1)


def lock_row(db: Session, email: str) -> RateLimit | None:
    db.expire_all()
    return db.get(RateLimit, f"login-account:{email}")


# --- H1: users:write / users:delete is not a way up --------------------------------------


@pytest.fixture
def helpdesk(client: TestClient, admin: Account) -> Account:
    """Eve holds users:read, users:write and users:delete, nothing else."""
    eve = register(client, "eve@example.com")
    give_role(client, admin, eve, "helpdesk", ["users:read", "users:write", "users:delete"])
    return relogin(client, eve)


def test_users_write_cannot_take_over_a_more_powerful_account(
    client: TestClient, admin: Account, helpdesk: Account
) -> None:
    bob = register(client, "bob@example.com")
    give_role(client, admin, bob, "admin", [])  # the seeded role: every built-in permission
    before = client.get(f"/users/{bob.id}", headers=admin.headers).json()
    attacks = [
        {"password": "eve knows this password now"},
        {"email": "eve+bob@example.com", "is_verified": True},
        {"is_active": False},
        {"full_name": "Bob (pwned)"},
    ]
    for body in attacks:
        response = client.patch(f"/users/{bob.id}", json=body, headers=helpdesk.headers)
        assert response.status_code == 403 and response.json()["code"] == "PERMISSION_DENIED", body
    deleted = client.delete(f"/users/{bob.id}", headers=helpdesk.headers)
    assert deleted.status_code == 403 and deleted.json()["code"] == "PERMISSION_DENIED"
    assert client.get(f"/users/{bob.id}", headers=admin.headers).json() == before  # nothing changed
    login(client, bob.email, PASSWORD)


def test_users_write_still_manages_accounts_within_its_own_permissions(
    client: TestClient, admin: Account, helpdesk: Account
) -> None:
    carol = register(client, "carol@example.com")  # no role at all
    dan = register(client, "dan@example.com")
    give_role(client, admin, dan, "viewer", ["users:read"])  # a subset of Eve's
    for target in (carol, dan):
        changed = client.patch(f"/users/{target.id}", json={"full_name": "Renamed"}, headers=helpdesk.headers)
        assert changed.status_code == 200 and changed.json()["full_name"] == "Renamed"
    assert (
        client.patch(f"/users/{dan.id}", json={"password": NEW_PASSWORD}, headers=helpdesk.headers).status_code == 200
    )
    login(client, dan.email, NEW_PASSWORD)
    assert client.delete(f"/users/{carol.id}", headers=helpdesk.headers).status_code == 204


def test_a_role_granted_at_the_same_moment_cannot_slip_past_the_check(
    client: TestClient, admin: Account, helpdesk: Account, app: FastAPI, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Eve's password change for Bob is checked again under Bob's row lock, after the hash:
    a role granted to Bob while Eve's request was hashing is seen, and the change refused."""
    bob = register(client, "bob@example.com")
    from auth_service import accounts

    real_hash = accounts.hash_password  # type: ignore[attr-defined]

    def grant_admin_while_hashing(settings: Settings, password: str) -> str:
        granted = client.post(f"/users/{bob.id}/roles/admin", headers=admin.headers)
        assert granted.status_code == 200
        return real_hash(settings, password)

    monkeypatch.setattr(accounts, "hash_password", grant_admin_while_hashing)
    response = client.patch(f"/users/{bob.id}", json={"password": NEW_PASSWORD}, headers=helpdesk.headers)
    assert response.status_code == 403 and response.json()["code"] == "PERMISSION_DENIED"
    login(client, bob.email, PASSWORD)


# --- H2: a login in flight cannot outlive a password change -----------------------------


def pause_logins_after_the_hash(
    monkeypatch: pytest.MonkeyPatch, password: str
) -> tuple[threading.Event, threading.Event]:
    """Logins with `password` stop right after their (successful) hash until released."""
    reached, release = threading.Event(), threading.Event()
    real_verify = credentials.verify_password  # type: ignore[attr-defined]

    def verify(settings: Settings, given: str, password_hash: str | None) -> tuple[bool, str | None]:
        result = real_verify(settings, given, password_hash)
        if given == password and result[0]:
            reached.set()
            assert release.wait(10)
        return result

    monkeypatch.setattr(credentials, "verify_password", verify)
    return reached, release


@pytest.mark.parametrize("change", ["self", "admin", "reset"])
def test_a_login_started_before_a_password_change_gets_nothing(
    change: str, client: TestClient, admin: Account, db: Session, monkeypatch: pytest.MonkeyPatch
) -> None:
    ada = register(client, "ada@example.com")
    reset_token = None
    if change == "reset":
        assert client.post("/auth/password-reset/request", json={"email": ada.email}).status_code == 202
        deliver_due(client.app.state.engine, client.app.state.settings)  # type: ignore[attr-defined]
        reset_token = mailed_token(db, ada.email)
    reached, release = pause_logins_after_the_hash(monkeypatch, PASSWORD)
    with ThreadPoolExecutor(1) as pool:
        in_flight = pool.submit(client.post, "/auth/login", data={"username": ada.email, "password": PASSWORD})
        assert reached.wait(10)
        if change == "self":
            monkeypatch.undo()  # the change itself checks the current password
            body = {"current_password": PASSWORD, "new_password": NEW_PASSWORD}
            assert client.post("/users/me/password", json=body, headers=ada.headers).status_code == 204
        elif change == "admin":
            assert (
                client.patch(f"/users/{ada.id}", json={"password": NEW_PASSWORD}, headers=admin.headers).status_code
                == 200
            )
        else:
            reset = {"token": reset_token, "new_password": NEW_PASSWORD}
            assert client.post("/auth/password-reset/confirm", json=reset).status_code == 200
        release.set()
        late = in_flight.result(timeout=10)
    assert late.status_code == 400 and late.json()["code"] == "INVALID_CREDENTIALS"
    monkeypatch.undo()
    login(client, ada.email, NEW_PASSWORD)


def test_a_rehash_in_flight_never_overwrites_a_newer_password(
    database_url: str, client: TestClient, admin: Account, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Raised Argon2 parameters make the next login rehash the old password; a password
    set while that login hashes must survive it."""
    ada = register(client, "ada@example.com")  # hashed with the suite's cheap parameters
    stronger = create_app(make_settings(database_url, argon2_time_cost=2))
    reached, release = pause_logins_after_the_hash(monkeypatch, PASSWORD)
    with TestClient(stronger) as upgraded, ThreadPoolExecutor(1) as pool:
        in_flight = pool.submit(upgraded.post, "/auth/login", data={"username": ada.email, "password": PASSWORD})
        assert reached.wait(10)
        assert (
            client.patch(f"/users/{ada.id}", json={"password": NEW_PASSWORD}, headers=admin.headers).status_code == 200
        )
        release.set()
        assert in_flight.result(timeout=10).status_code == 400
    stronger.state.engine.dispose()
    monkeypatch.undo()
    login(client, ada.email, NEW_PASSWORD)
    assert client.post("/auth/login", data={"username": ada.email, "password": PASSWORD}).status_code == 400


def test_logins_hammering_during_a_password_change_all_end(live_server: LiveServer) -> None:
    """Threads keep logging in with the old password while it is changed: afterwards every
    access and refresh token any of them got is refused."""
    url = live_server.url
    httpx.post(f"{url}/auth/signup", json={"email": "ada@example.com", "password": PASSWORD}).raise_for_status()
    own = httpx.post(f"{url}/auth/login", data={"username": "ada@example.com", "password": PASSWORD}).json()
    changed = threading.Event()
    got: list[dict[str, Any]] = []

    def keep_logging_in() -> None:
        with httpx.Client(base_url=url, timeout=30) as http:
            for _ in range(200):
                response = http.post("/auth/login", data={"username": "ada@example.com", "password": PASSWORD})
                if response.status_code == 200:
                    got.append(response.json())
                elif changed.is_set():
                    return

    threads = [threading.Thread(target=keep_logging_in) for _ in range(4)]
    for thread in threads:
        thread.start()
    while len(got) < 4:
        pass
    body = {"current_password": PASSWORD, "new_password": NEW_PASSWORD}
    response = httpx.post(f"{url}/users/me/password", json=body, headers=bearer(own["access_token"]), timeout=30)
    assert response.status_code == 204
    changed.set()
    for thread in threads:
        thread.join(timeout=60)
    assert got
    with httpx.Client(base_url=url, timeout=30) as http:
        for tokens in got:
            assert http.get("/users/me", headers=bearer(tokens["access_token"])).status_code == 401
            assert http.post("/auth/refresh", json={"refresh_token": tokens["refresh_token"]}).status_code == 401
        assert http.get("/users/me", headers=bearer(own["access_token"])).status_code == 200  # the changer's own


# --- H3: the first superuser never promotes a squatter --------------------------------------


def test_first_superuser_at_start_up_leaves_a_squatter_alone(
    database_url: str, client: TestClient, db: Session, caplog: pytest.LogCaptureFixture
) -> None:
    squatter = register(client, "root@example.com")
    overrides = {"first_superuser_email": "ROOT@example.com", "first_superuser_password": "the real admin password"}
    app = create_app(make_settings(database_url, **overrides))
    with TestClient(app) as started:
        assert started.get("/users/me", headers=squatter.headers).json()["is_superuser"] is False
        assert started.post("/auth/login", data={"username": squatter.email, "password": overrides[
            "first_superuser_password"]}).status_code == 400  # fmt: skip
    app.state.engine.dispose()
    assert any(r.levelname == "ERROR" and "--promote-existing" in r.getMessage() for r in caplog.records)
    db.expire_all()
    assert db.exec(select(User).where(col(User.is_superuser))).all() == []


def test_first_superuser_at_start_up_is_created_when_missing(database_url: str, client: TestClient) -> None:
    overrides = {"first_superuser_email": "root@example.com", "first_superuser_password": "the real admin password"}
    app = create_app(make_settings(database_url, **overrides))
    with TestClient(app) as started:
        me = started.get("/users/me", headers=bearer(login(started, "root@example.com", "the real admin password")[
            "access_token"]))  # fmt: skip
        assert me.json()["is_superuser"] is True
    app.state.engine.dispose()


def test_a_weak_first_superuser_password_creates_no_superuser_and_stops_nothing(
    database_url: str, client: TestClient, db: Session, caplog: pytest.LogCaptureFixture
) -> None:
    """The policy applies when the account would be made; a password left in the environment
    of a deployment whose superuser exists is never used, and must not stop it."""
    weak = {"first_superuser_email": "root@example.com", "first_superuser_password": "password1"}
    app = create_app(make_settings(database_url, **weak))
    with TestClient(app) as started:
        assert started.get("/health").status_code == 200
    app.state.engine.dispose()
    assert db.exec(select(User).where(col(User.is_superuser))).all() == []
    refused = [r.getMessage() for r in caplog.records if r.levelname == "ERROR"]
    assert any("FIRST_SUPERUSER_PASSWORD is refused" in m and "too common" in m for m in refused)
    assert all("password1" not in m for m in refused)

    register(client, "root@example.com")  # the account exists (here, an ordinary one)
    caplog.clear()
    app = create_app(make_settings(database_url, **weak))
    with TestClient(app) as started:
        assert started.get("/health").status_code == 200
    app.state.engine.dispose()
    assert not any("is refused" in r.getMessage() for r in caplog.records)


def test_two_workers_starting_together_create_one_first_superuser(
    database_url: str, client: TestClient, db: Session, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Both see no account, both hash, both insert: the unique email lets one win, and the
    other starts quietly instead of failing (which stopped every worker)."""
    overrides = {"first_superuser_email": "root@example.com", "first_superuser_password": "the real admin password"}
    in_step = threading.Barrier(2, timeout=10)
    real_hash = security.hash_password

    def hash_in_step(settings: Settings, password: str) -> str:
        hashed = real_hash(settings, password)
        in_step.wait()  # both have checked that the account is missing
        return hashed

    monkeypatch.setattr(accounts, "hash_password", hash_in_step)
    apps = [create_app(make_settings(database_url, **overrides)) for _ in range(2)]
    failures: list[BaseException] = []

    def start(app: FastAPI) -> None:
        try:
            with TestClient(app):  # its start-up creates the superuser, or finds it made
                pass
        except BaseException as exc:  # the test reports it
            failures.append(exc)
        finally:
            app.state.engine.dispose()

    threads = [threading.Thread(target=start, args=(app,)) for app in apps]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert failures == []
    assert len(db.exec(select(User).where(col(User.is_superuser))).all()) == 1


# --- H4 and M5: the current password guards the email, and is throttled like a login ------


def test_changing_the_email_needs_the_current_password(client: TestClient, user: Account, db: Session) -> None:
    missing = client.patch("/users/me", json={"email": "thief@example.com"}, headers=user.headers)
    assert missing.status_code == 422 and missing.json()["code"] == "VALIDATION_ERROR"
    wrong = client.patch(
        "/users/me", json={"email": "thief@example.com", "current_password": "a guess"}, headers=user.headers
    )
    assert wrong.status_code == 400 and wrong.json()["code"] == "INVALID_CREDENTIALS"
    assert "a guess" not in wrong.text
    assert client.get("/users/me", headers=user.headers).json()["email"] == user.email
    row = lock_row(db, user.email)
    assert row is not None and row.count == 1  # counted as a failed login
    right = client.patch(
        "/users/me", json={"email": "ada.new@example.com", "current_password": PASSWORD}, headers=user.headers
    )
    assert right.status_code == 200 and right.json()["email"] == "ada.new@example.com"
    notices = db.exec(select(OutboxMessage).where(col(OutboxMessage.kind) == "email")).all()
    assert any(m.payload["to"] == user.email and "changed" in m.payload["subject"] for m in notices)


CURRENT_PASSWORD_CHECKS: list[tuple[str, str, Callable[[str], dict[str, Any]]]] = [
    ("POST", "/users/me/password", lambda guess: {"current_password": guess, "new_password": NEW_PASSWORD}),
    ("DELETE", "/users/me", lambda guess: {"password": guess}),
    ("PATCH", "/users/me", lambda guess: {"email": "new@example.com", "current_password": guess}),
]


@pytest.mark.parametrize(("method", "path", "body"), CURRENT_PASSWORD_CHECKS)
def test_current_password_guesses_lock_the_account_like_logins(
    method: str, path: str, body: Callable[[str], dict[str, Any]], client: TestClient, user: Account
) -> None:
    for _ in range(5):  # LOGIN_MAX_FAILURES
        wrong = client.request(method, path, json=body("a wrong guess"), headers=user.headers)
        assert wrong.status_code == 400 and wrong.json()["code"] == "INVALID_CREDENTIALS"
    locked = client.request(method, path, json=body(PASSWORD), headers=user.headers)  # even the right one
    assert locked.status_code == 429 and locked.json()["code"] == "RATE_LIMITED"
    assert int(locked.headers["retry-after"]) >= 1
    login_now = client.post("/auth/login", data={"username": user.email, "password": PASSWORD})
    assert login_now.status_code == 429  # the same lock as /auth/login
    assert client.get("/users/me", headers=user.headers).json()["email"] == user.email  # nothing changed


# --- M1: the lockout holds when guesses arrive at once -----------------------------------


def count_verifications(monkeypatch: pytest.MonkeyPatch) -> list[int]:
    calls: list[int] = []
    real_verify = credentials.verify_password  # type: ignore[attr-defined]

    def verify(settings: Settings, given: str, password_hash: str | None) -> tuple[bool, str | None]:
        calls.append(1)
        return real_verify(settings, given, password_hash)

    monkeypatch.setattr(credentials, "verify_password", verify)
    return calls


def guess_at_once(url: str, names: list[str]) -> list[httpx.Response]:
    barrier = threading.Barrier(len(names))

    def guess(name: str) -> httpx.Response:
        with httpx.Client(base_url=url, timeout=60) as http:
            barrier.wait()
            return http.post("/auth/login", data={"username": name, "password": "a wrong guess"})

    with ThreadPoolExecutor(len(names)) as pool:
        return list(pool.map(guess, names))


@pytest.mark.parametrize("settings_overrides", [{"login_lockout_base_seconds": 60}])
def test_simultaneous_guesses_verify_at_most_the_limit(
    live_server: LiveServer, settings: Settings, monkeypatch: pytest.MonkeyPatch
) -> None:
    httpx.post(f"{live_server.url}/auth/signup", json={"email": "ada@example.com", "password": PASSWORD})
    verified = count_verifications(monkeypatch)
    answers = guess_at_once(live_server.url, ["ada@example.com"] * 24)
    statuses = [a.status_code for a in answers]
    assert len(verified) <= settings.login_max_failures + settings.hash_concurrency
    assert statuses.count(400) == len(verified) and statuses.count(429) == 24 - len(verified)
    assert all(int(a.headers["retry-after"]) >= 1 for a in answers if a.status_code == 429)


def test_simultaneous_guesses_across_two_workers_verify_at_most_the_limit(workers: Workers) -> None:
    """The bound holds for the deployment, not per process: each failed guess answered 400
    was verified; with LOGIN_MAX_FAILURES=5 and HASH_CONCURRENCY=2, at most 7 of them (the
    lock outlasts the test: a lock that ran out would rightly let HASH_CONCURRENCY more in)."""
    workers.env["LOGIN_LOCKOUT_BASE_SECONDS"] = "60"
    urls = workers.start()
    httpx.post(f"{urls[0]}/auth/signup", json={"email": "ada@example.com", "password": PASSWORD}).raise_for_status()
    barrier = threading.Barrier(16)

    def guess(i: int) -> int:
        with httpx.Client(base_url=urls[i % 2], timeout=60) as http:
            barrier.wait()
            return http.post(
                "/auth/login", data={"username": "ada@example.com", "password": "a wrong guess"}
            ).status_code

    with ThreadPoolExecutor(16) as pool:
        statuses = list(pool.map(guess, range(16)))
    assert set(statuses) <= {400, 429} and statuses.count(400) <= 5 + 2, statuses


@pytest.mark.parametrize("settings_overrides", [{"login_ip_limit": "5/hour", "login_lockout_base_seconds": 60}])
def test_simultaneous_guesses_from_one_ip_verify_at_most_its_limit(
    live_server: LiveServer, settings: Settings, monkeypatch: pytest.MonkeyPatch
) -> None:
    verified = count_verifications(monkeypatch)
    answers = guess_at_once(live_server.url, [f"user{i}@example.com" for i in range(24)])  # spraying
    assert len(verified) <= 5 + settings.hash_concurrency
    assert [a.status_code for a in answers].count(429) == 24 - len(verified)


# --- M2: metrics labels are bounded ------------------------------------------------------


def test_made_up_methods_get_405_and_one_label(client: TestClient) -> None:
    for i in range(30):
        response = client.request(f"FOO{i}", "/users/me")
        assert response.status_code == 405 and response.json()["code"] == "METHOD_NOT_ALLOWED"
        assert response.headers["x-content-type-options"] == "nosniff"
    metrics = client.get("/metrics").text
    assert "FOO" not in metrics and 'method="OTHER"' in metrics
    assert client.request("PROPFIND", "/nope").status_code == 405


def test_made_up_methods_reach_the_app_under_the_real_server(live_server: LiveServer) -> None:
    """uvicorn with httptools answers a method its parser does not know with its own bare 400
    before the app sees it; h11 (the only parser we install, and the one our commands name)
    passes it on, so it is a 405 in the documented shape."""
    answer = httpx.request("BREW", f"{live_server.url}/users/me")
    assert answer.status_code == 405 and answer.json()["code"] == "METHOD_NOT_ALLOWED"


# --- M3: roles:write cannot weaken or impersonate a role above it --------------------------


def test_roles_write_needs_every_permission_of_the_role(client: TestClient, admin: Account) -> None:
    eve = register(client, "eve@example.com")
    give_role(client, admin, eve, "role-editor", ["roles:read", "roles:write", "users:read"])
    eve = relogin(client, eve)
    changes: list[dict[str, Any]] = [{"permissions": []}, {"name": "admin-old"}, {"description": "harmless?"}]
    for body in changes:
        response = client.patch("/roles/admin", json=body, headers=eve.headers)
        assert response.status_code == 403 and response.json()["code"] == "PERMISSION_DENIED", body
    assert client.delete("/roles/admin", headers=eve.headers).status_code == 403
    # a role within her permissions she may change, but not rename to an existing name
    assert (
        client.post("/roles", json={"name": "viewer", "permissions": ["users:read"]}, headers=eve.headers).status_code
        == 201
    )
    assert client.patch("/roles/viewer", json={"description": "Reads users"}, headers=eve.headers).status_code == 200
    taken = client.patch("/roles/viewer", json={"name": "role-editor"}, headers=eve.headers)
    assert taken.status_code == 409 and taken.json()["code"] == "CONFLICT"
    assert client.get("/roles/admin", headers=admin.headers).json()["permissions"]  # untouched


def test_the_builtin_admin_role_cannot_be_renamed_or_deleted(client: TestClient, admin: Account) -> None:
    renamed = client.patch("/roles/admin", json={"name": "root"}, headers=admin.headers)
    assert renamed.status_code == 409 and renamed.json()["code"] == "CONFLICT"
    deleted = client.delete("/roles/admin", headers=admin.headers)
    assert deleted.status_code == 409 and deleted.json()["code"] == "CONFLICT"
    assert client.patch("/roles/admin", json={"description": "Everything."}, headers=admin.headers).status_code == 200


# --- M6: an email change cannot bomb a mailbox --------------------------------------------


@pytest.mark.parametrize("settings_overrides", [{"email_change_limit": "2/day"}])
def test_email_changes_are_limited_per_account(client: TestClient, user: Account) -> None:
    for i in range(2):
        body = {"email": f"ada{i}@example.com", "current_password": PASSWORD}
        assert client.patch("/users/me", json=body, headers=user.headers).status_code == 200
    limited = client.patch(
        "/users/me", json={"email": "ada9@example.com", "current_password": PASSWORD}, headers=user.headers
    )
    assert limited.status_code == 429 and limited.json()["code"] == "RATE_LIMITED" and limited.headers["retry-after"]


@pytest.mark.parametrize("settings_overrides", [{"mail_email_limit": "1/hour"}])
@pytest.mark.parametrize("spent", ["new", "old"])
def test_email_changes_spend_the_mail_budget_of_both_addresses(spent: str, client: TestClient, user: Account) -> None:
    address = "victim@example.com" if spent == "new" else user.email
    assert client.post("/auth/password-reset/request", json={"email": address}).status_code == 202
    limited = client.patch(
        "/users/me", json={"email": "victim@example.com", "current_password": PASSWORD}, headers=user.headers
    )
    assert limited.status_code == 429 and limited.json()["code"] == "RATE_LIMITED"
    assert client.get("/users/me", headers=user.headers).json()["email"] == user.email


# --- low ---------------------------------------------------------------------------------


def test_a_password_reset_clears_the_login_lock(client: TestClient, user: Account, db: Session) -> None:
    for _ in range(5):
        client.post("/auth/login", data={"username": user.email, "password": "a wrong guess"})
    assert client.post("/auth/login", data={"username": user.email, "password": PASSWORD}).status_code == 429
    assert client.post("/auth/password-reset/request", json={"email": user.email}).status_code == 202
    deliver_due(client.app.state.engine, client.app.state.settings)  # type: ignore[attr-defined]
    body = {"token": mailed_token(db, user.email), "new_password": NEW_PASSWORD}
    assert client.post("/auth/password-reset/confirm", json=body).status_code == 200
    login(client, user.email, NEW_PASSWORD)  # at once, no 429


@pytest.mark.parametrize("settings_overrides", [{"session_max_days": 30, "refresh_token_expire_days": 7}])
def test_sessions_have_an_absolute_lifetime(client: TestClient, user: Account, db: Session) -> None:
    # a session refreshed every day stays alive for 30 days, then ends
    db.exec(update(UserSession).values(created_at=utcnow() - timedelta(days=29, hours=23)))
    db.commit()
    tokens = client.post("/auth/refresh", json={"refresh_token": user.refresh_token})
    assert tokens.status_code == 200
    [row] = db.exec(select(UserSession)).all()
    db.refresh(row)
    assert row.expires_at <= row.created_at + timedelta(days=30)  # the refresh did not extend it past the cap
    db.exec(update(UserSession).values(created_at=utcnow() - timedelta(days=30, seconds=1)))
    db.commit()
    refused = client.post("/auth/refresh", json={"refresh_token": tokens.json()["refresh_token"]})
    assert refused.status_code == 401 and refused.json()["code"] == "TOKEN_EXPIRED"
    db.refresh(row)
    assert row.revoked_at is not None and row.revoked_reason == "max_age"
    assert client.get("/users/me", headers=bearer(tokens.json()["access_token"])).status_code == 401


@pytest.mark.parametrize("settings_overrides", [{"require_verified_email": True}])
def test_unverified_accounts_are_refused_everywhere_when_verification_is_required(
    client: TestClient, admin: Account, db: Session
) -> None:
    ada = client.post("/users", json={"email": "ada@example.com", "password": PASSWORD, "is_verified": True},
                      headers=admin.headers).json()  # fmt: skip
    tokens = login(client, "ada@example.com")
    moved = client.patch("/users/me", json={"email": "ada.new@example.com", "current_password": PASSWORD},
                         headers=bearer(tokens["access_token"]))  # fmt: skip
    assert moved.status_code == 200 and moved.json()["is_verified"] is False
    for response in (
        client.get("/users/me", headers=bearer(tokens["access_token"])),
        client.get("/auth/sessions", headers=bearer(tokens["access_token"])),
        client.post("/auth/refresh", json={"refresh_token": tokens["refresh_token"]}),
        client.post("/auth/login", data={"grant_type": "refresh_token", "refresh_token": tokens["refresh_token"]}),
    ):
        assert response.status_code == 403 and response.json()["code"] == "EMAIL_NOT_VERIFIED", response.text
    # the way out stays open: a new verification mail, and logging out
    assert client.post("/auth/verify-email/request", headers=bearer(tokens["access_token"])).status_code == 202
    verified = client.post("/auth/verify-email", json={"token": mailed_token(db, "ada.new@example.com")})
    assert verified.status_code == 200
    assert client.get("/users/me", headers=bearer(tokens["access_token"])).json()["id"] == ada["id"]
    assert client.post("/auth/logout", headers=bearer(tokens["access_token"])).status_code == 204


@pytest.mark.parametrize("settings_overrides", [{"login_failure_reset_seconds": 600}])
def test_failures_are_forgotten_only_after_a_quiet_period(client: TestClient, user: Account, db: Session) -> None:
    def age_failures(by: timedelta) -> None:
        db.expire_all()
        for row in db.exec(select(RateLimit)).all():
            row.window_start -= by
            db.add(row)
        db.commit()

    def fail(times: int) -> None:
        for _ in range(times):
            assert client.post("/auth/login", data={"username": user.email, "password": "nope"}).status_code == 400

    fail(2)
    age_failures(timedelta(seconds=590))  # the first failures are almost 10 minutes old
    fail(2)
    age_failures(timedelta(seconds=20))  # now the first are over 10 minutes old, the last ones are not
    fail(1)
    assert client.post("/auth/login", data={"username": user.email, "password": PASSWORD}).status_code == 429
    row = lock_row(db, user.email)
    assert row is not None and row.count == 5
    db.exec(update(RateLimit).values(locked_until=None))
    db.commit()
    age_failures(timedelta(seconds=601))  # ten quiet minutes
    fail(1)
    row = lock_row(db, user.email)
    assert row is not None and row.count == 1


def test_reset_requests_name_the_account_when_there_is_one(client: TestClient, admin: Account, user: Account) -> None:
    for email in (user.email, "ghost@example.com"):
        assert client.post("/auth/password-reset/request", json={"email": email}).status_code == 202
    deliver_due(client.app.state.engine, client.app.state.settings)  # type: ignore[attr-defined]
    events = client.get("/audit-events", params={"type": "password.reset_requested"}, headers=admin.headers).json()
    subjects = {e["details"]["email"]: e["subject_id"] for e in events["data"]}
    assert subjects == {user.email: user.id, "ghost@example.com": None}
    assert all(e["client_ip"] == "testclient" for e in events["data"])  # from the request, not the sender


def test_the_last_active_superuser_cannot_delete_themselves(client: TestClient, admin: Account) -> None:
    alone = client.request("DELETE", "/users/me", json={"password": admin.password}, headers=admin.headers)
    assert alone.status_code == 409 and alone.json()["code"] == "CONFLICT"
    second = client.post("/users", json={"email": "root2@example.com", "password": PASSWORD, "is_superuser": True},
                         headers=admin.headers)  # fmt: skip
    assert second.status_code == 201
    assert (
        client.request("DELETE", "/users/me", json={"password": admin.password}, headers=admin.headers).status_code
        == 204
    )


def test_two_superusers_deleting_themselves_at_once_leave_one(live_server: LiveServer, admin: Account) -> None:
    url = live_server.url
    headers = bearer(admin.access_token)
    body = {"email": "root2@example.com", "password": PASSWORD, "is_superuser": True}
    assert httpx.post(f"{url}/users", json=body, headers=headers).status_code == 201
    other = httpx.post(f"{url}/auth/login", data={"username": "root2@example.com", "password": PASSWORD}).json()
    both = [(headers, admin.password), (bearer(other["access_token"]), PASSWORD)]
    barrier = threading.Barrier(2)

    def delete_self(who: tuple[dict[str, str], str]) -> int:
        barrier.wait()
        return httpx.request(
            "DELETE", f"{url}/users/me", json={"password": who[1]}, headers=who[0], timeout=30
        ).status_code

    with ThreadPoolExecutor(2) as pool:
        assert sorted(pool.map(delete_self, both)) == [204, 409]


def test_production_refuses_any_forwarded_ip_and_warns_about_weak_setups(
    database_url: str, caplog: pytest.LogCaptureFixture
) -> None:
    with pytest.raises(ValueError, match="FORWARDED_ALLOW_IPS"):
        make_settings(database_url, environment="production", forwarded_allow_ips="*")
    assert make_settings(database_url, forwarded_allow_ips="*").forwarded_allow_ips == ["*"]  # allowed elsewhere
    warned = make_settings(
        database_url, environment="development", secret_key="tiny-key", email_backend="smtp", smtp_host="mail.internal"
    ).warnings()
    assert any("SECRET_KEY" in w for w in warned) and any("TLS" in w for w in warned)
    assert not any("tiny-key" in w for w in warned)  # the key itself is never printed
    app = create_app(make_settings(database_url, environment="development", secret_key="tiny-key"))
    with TestClient(app):
        pass
    app.state.engine.dispose()
    assert any("SECRET_KEY is shorter" in r.getMessage() for r in caplog.records)


def test_search_matches_non_ascii_names_in_any_case(client: TestClient, admin: Account) -> None:
    for email, name in [("elodie@example.com", "Élodie Ångström"), ("olga@example.com", "ОЛЬГА Петрова")]:
        body = {"email": email, "password": PASSWORD, "full_name": name}
        assert client.post("/users", json=body, headers=admin.headers).status_code == 201
    for q, expected in [
        ("élodie", "elodie@example.com"),
        ("ÅNGSTRÖM", "elodie@example.com"),
        ("ольга", "olga@example.com"),
    ]:
        found = client.get("/users", params={"q": q}, headers=admin.headers).json()["data"]
        assert [u["email"] for u in found] == [expected], q


def test_login_failures_for_unknown_names_keep_what_was_typed_secret(
    client: TestClient, admin: Account, db: Session
) -> None:
    typed = "MySecretPassw0rd!"  # typed into the username field by mistake
    client.post("/auth/login", data={"username": typed, "password": "whatever"})
    client.post("/auth/login", data={"username": "ghost@example.com", "password": "whatever"})
    events = client.get("/audit-events", params={"type": "auth.login_failed"}, headers=admin.headers).text
    assert typed not in events and typed.lower() not in events and "ghost@example.com" not in events
    keys = [row.key for row in db.exec(select(RateLimit)).all()]
    assert not any(typed.lower() in key for key in keys)


# --- found by a second review -------------------------------------------------------------


def test_users_write_cannot_move_its_own_account_through_the_admin_endpoint(
    client: TestClient, admin: Account, helpdesk: Account
) -> None:
    """A stolen admin token must not take over the admin's own account without its password."""
    for me, headers in ((helpdesk, helpdesk.headers), (admin, admin.headers)):
        for body in ({"email": "thief@evil.example"}, {"password": NEW_PASSWORD}, {"is_verified": True}):
            answer = client.patch(f"/users/{me.id}", json=body, headers=headers)
            assert answer.status_code == 403 and answer.json()["code"] == "PERMISSION_DENIED", body
        assert client.patch(f"/users/{me.id}", json={"full_name": "Still fine"}, headers=headers).status_code == 200
    login(client, helpdesk.email, PASSWORD)


def test_promote_existing_follows_the_address_not_the_row(
    client: TestClient, settings: Settings, db: Session, monkeypatch: pytest.MonkeyPatch
) -> None:
    """If the squatter moves the account to their own address while the operator's password
    hashes, nothing is promoted."""
    from auth_service import accounts

    squatter = register(client, "boss@example.com")
    real_hash = accounts.hash_password  # type: ignore[attr-defined]

    def hash_while_the_squatter_moves(settings: Settings, password: str) -> str:
        body = {"email": "mallory@example.com", "current_password": PASSWORD}
        assert client.patch("/users/me", json=body, headers=squatter.headers).status_code == 200
        return real_hash(settings, password)

    monkeypatch.setattr(accounts, "hash_password", hash_while_the_squatter_moves)
    found = accounts.find_user_by_email(db, "boss@example.com")
    assert found is not None
    with pytest.raises(ValueError, match="changed its address"):
        accounts.promote_to_superuser(db, settings, found, "the operator's new password")
    db.expire_all()
    assert db.exec(select(User).where(col(User.is_superuser))).all() == []


def test_a_login_in_flight_signs_what_the_account_holds_when_it_commits(
    client: TestClient, admin: Account, monkeypatch: pytest.MonkeyPatch
) -> None:
    ada = register(client, "ada@example.com")
    give_role(client, admin, ada, "admin", [])
    reached, release = pause_logins_after_the_hash(monkeypatch, PASSWORD)
    with ThreadPoolExecutor(1) as pool:
        in_flight = pool.submit(client.post, "/auth/login", data={"username": ada.email, "password": PASSWORD})
        assert reached.wait(10)
        assert client.delete(f"/users/{ada.id}/roles/admin", headers=admin.headers).status_code == 200
        release.set()
        late = in_flight.result(timeout=10)
    assert late.status_code == 200
    claims = jwt.get_unverified_claims(late.json()["access_token"])
    assert claims["roles"] == [] and claims["permissions"] == []


@pytest.mark.parametrize("settings_overrides", [{"require_verified_email": True}])
def test_introspection_calls_an_unverified_accounts_token_inactive_when_verification_is_required(
    client: TestClient, admin: Account
) -> None:
    body = {"email": "ada@example.com", "password": PASSWORD, "is_verified": True}
    assert client.post("/users", json=body, headers=admin.headers).status_code == 201
    tokens = login(client, "ada@example.com")
    moved = client.patch("/users/me", json={"email": "ada2@example.com", "current_password": PASSWORD},
                         headers=bearer(tokens["access_token"]))  # fmt: skip
    assert moved.status_code == 200 and moved.json()["is_verified"] is False
    introspected = client.post("/auth/introspect", data={"token": tokens["access_token"]}, auth=service(client, admin))
    assert introspected.json() == {"active": False}


def test_deleting_an_account_while_it_logs_out_never_deadlocks(
    database_url: str, live_server: LiveServer, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Deleting cascades to the session rows, which a logout locks: both take their row
    locks before the audit lock, so neither waits on the other in a cycle (PostgreSQL)."""
    from auth_service import audit

    url = live_server.url
    httpx.post(f"{url}/auth/signup", json={"email": "ada@example.com", "password": PASSWORD}).raise_for_status()
    one, two = (login_over(url, "ada@example.com") for _ in range(2))
    logout_in, delete_in = threading.Event(), threading.Event()
    real = audit.record

    def record(session: Any, settings: Any, type: str, **details: Any) -> None:
        if type == "auth.logout":  # its session row is locked by now
            logout_in.set()
            delete_in.wait(0.5)  # the delete, waiting on our row, never gets there now
            time.sleep(0.1)
        if type == "user.deleted":
            logout_in.wait(5)
            delete_in.set()
        real(session, settings, type, **details)

    monkeypatch.setattr(audit, "record", record)
    with ThreadPoolExecutor(2) as pool:
        logout = pool.submit(httpx.post, f"{url}/auth/logout", headers=bearer(two["access_token"]), timeout=30)
        time.sleep(0.1)
        delete = pool.submit(httpx.request, "DELETE", f"{url}/users/me", json={"password": PASSWORD},
                             headers=bearer(one["access_token"]), timeout=30)  # fmt: skip
        statuses = sorted([logout.result().status_code, delete.result().status_code])
    assert statuses == [204, 204]


def test_verifying_while_an_admin_changes_the_email_never_deadlocks(
    live_server: LiveServer, admin: Account, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Both lock the account row first, then the token rows (PostgreSQL)."""
    from auth_service import accounts, one_time_tokens
    from tests.conftest import mailed_token, queued_mails

    url = live_server.url
    ada = httpx.post(f"{url}/auth/signup", json={"email": "ada@example.com", "password": PASSWORD}).json()
    token = mailed_token(queued_mails(live_server.app, "ada@example.com")[-1])
    spent, user_locked = threading.Event(), threading.Event()
    real_spend, real_queue = one_time_tokens.spend, accounts.queue_mail  # type: ignore[attr-defined]

    def spend(session: Any, row: Any) -> None:
        real_spend(session, row)
        spent.set()
        user_locked.wait(0.5)

    def queue_mail(session: Any, mail: Any) -> None:  # in _apply, the account row locked
        spent.wait(0.5)
        user_locked.set()
        real_queue(session, mail)

    monkeypatch.setattr(one_time_tokens, "spend", spend)
    monkeypatch.setattr(accounts, "queue_mail", queue_mail)
    with ThreadPoolExecutor(2) as pool:
        verify = pool.submit(httpx.post, f"{url}/auth/verify-email", json={"token": token}, timeout=30)
        change = pool.submit(httpx.patch, f"{url}/users/{ada['id']}", json={"email": "ada2@example.com"},
                             headers=bearer(admin.access_token), timeout=30)  # fmt: skip
        statuses = [verify.result().status_code, change.result().status_code]
    assert 500 not in statuses and 503 not in statuses, statuses
    assert statuses[1] == 200


def login_over(url: str, email: str) -> dict[str, Any]:
    answer = httpx.post(f"{url}/auth/login", data={"username": email, "password": PASSWORD})
    answer.raise_for_status()
    body: dict[str, Any] = answer.json()
    return body
