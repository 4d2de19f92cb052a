"""The audit log: each action recorded in order with actor and IP; the polling cursor;
webhooks signed and delivered once through the outbox, surviving a receiver outage."""

import hashlib
import hmac
import json
import socket
import threading
from collections.abc import Iterator
from datetime import timedelta
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import pytest
from fastapi import FastAPI
from fastapi.testclient import TestClient
from sqlmodel import Session, select
from standardwebhooks.webhooks import Webhook, WebhookVerificationError

from auth_service.models import AuditEvent, utcnow
from auth_service.outbox import deliver_due
from tests.conftest import PASSWORD, Account, register

WEBHOOK_SECRET = "webhook-secret-for-tests"


def events(client: TestClient, admin: Account, **params: Any) -> list[dict[str, Any]]:
    response = client.get("/audit-events", params={"limit": 200, **params}, headers=admin.headers)
    assert response.status_code == 200, response.text
    data: list[dict[str, Any]] = response.json()["data"]
    return data


def test_actions_are_recorded_in_order_with_actor_and_ip(client: TestClient, admin: Account) -> None:
    start = events(client, admin)[-1]["id"]
    user = register(client, "ada@example.com")
    client.post("/auth/login", data={"username": "ada@example.com", "password": "wrong password"})
    client.post(
        "/users/me/password",
        json={"current_password": PASSWORD, "new_password": "a new long password"},
        headers=user.headers,
    )
    client.post("/roles", json={"name": "support", "permissions": ["users:read"]}, headers=admin.headers)
    client.post(f"/users/{user.id}/roles/support", headers=admin.headers)
    client.delete(f"/users/{user.id}/roles/support", headers=admin.headers)
    client.patch(f"/users/{user.id}", json={"full_name": "Ada"}, headers=admin.headers)
    client.post("/auth/logout", headers=user.headers)
    client.delete(f"/users/{user.id}", headers=admin.headers)

    recorded = events(client, admin, after=start)
    assert [e["type"] for e in recorded] == [
        "user.signed_up",
        "auth.login_succeeded",
        "auth.login_failed",
        "password.changed",
        "role.created",
        "role.assigned",
        "role.removed",
        "user.updated",
        "auth.logout",
        "user.deleted",
    ]
    ids = [e["id"] for e in recorded]
    assert ids == sorted(ids)
    by_type = {e["type"]: e for e in recorded}
    assert by_type["auth.login_succeeded"]["actor_id"] == user.id
    assert by_type["auth.login_failed"]["subject_id"] == user.id
    assert by_type["auth.login_failed"]["details"] == {"email": "ada@example.com", "reason": "invalid_credentials"}
    assert by_type["role.assigned"]["actor_id"] == admin.id and by_type["role.assigned"]["subject_id"] == user.id
    assert by_type["user.updated"]["details"] == {"fields": ["full_name"]}
    assert all(e["client_ip"] == "testclient" and e["user_agent"] == "testclient" for e in recorded)
    assert all(e["at"].endswith("Z") for e in recorded)


def test_no_secret_in_the_audit_log(client: TestClient, admin: Account) -> None:
    user = register(client, "ada@example.com")
    client.patch(f"/users/{user.id}", json={"password": "admin set password"}, headers=admin.headers)
    client.post("/auth/login", data={"username": "ada@example.com", "password": "a wrong guess"})
    text = json.dumps(events(client, admin))
    for secret in (PASSWORD, "admin set password", "a wrong guess", user.access_token, user.refresh_token, "$argon2"):
        assert secret not in text


def test_unknown_email_login_failure_is_recorded(client: TestClient, admin: Account) -> None:
    client.post("/auth/login", data={"username": "Ghost@Example.com", "password": "whatever it is"})
    [event] = events(client, admin, type="auth.login_failed")
    assert event["subject_id"] is None and event["details"]["reason"] == "invalid_credentials"
    assert "email" not in event["details"] and len(event["details"]["username_hash"]) == 32


def test_filters_and_cursor(client: TestClient, admin: Account) -> None:
    ada = register(client, "ada@example.com")
    register(client, "bob@example.com")
    mine = events(client, admin, user_id=ada.id)
    assert mine and all(ada.id in (e["actor_id"], e["subject_id"]) for e in mine)
    signups = events(client, admin, type="user.signed_up")
    assert [e["details"]["email"] for e in signups] == ["ada@example.com", "bob@example.com"]
    everything = events(client, admin)
    page = client.get("/audit-events", params={"after": everything[1]["id"], "limit": 2}, headers=admin.headers).json()
    assert [e["id"] for e in page["data"]] == [e["id"] for e in everything[2:4]]
    assert page["count"] == len(everything) - 2
    naive_past = "2000-01-01T00:00:00"  # no offset: taken as UTC
    assert len(events(client, admin, since=naive_past)) == len(everything)
    future = (utcnow() + timedelta(days=1)).isoformat()
    assert events(client, admin, since=future) == []
    assert len(events(client, admin, until=future)) == len(everything)


@pytest.mark.parametrize(
    "params",
    [
        {"type": "not a type"},
        {"after": -1},
        {"after": 2**63},
        {"user_id": "x"},
        {"since": "yesterday"},
        {"since": "0001-01-01T00:00:00+14:00"},  # leaves the calendar in UTC (the fuzzer found it)
        {"until": "9999-12-31T23:59:59-14:00"},
    ],
)
def test_bad_filters_are_422(client: TestClient, admin: Account, params: dict[str, Any]) -> None:
    assert client.get("/audit-events", params=params, headers=admin.headers).status_code == 422


def test_audit_read_permission_is_required(client: TestClient, admin: Account) -> None:
    user = register(client, "ada@example.com")
    assert client.get("/audit-events", headers=user.headers).status_code == 403
    client.post("/roles", json={"name": "auditor", "permissions": ["audit:read"]}, headers=admin.headers)
    client.post(f"/users/{user.id}/roles/auditor", headers=admin.headers)
    assert client.get("/audit-events", headers=user.headers).status_code == 200


def test_polling_under_concurrent_writes_skips_nothing(client: TestClient, admin: Account) -> None:
    """Poll with `after` while signups commit concurrently: every event seen exactly once."""
    seen: list[int] = []
    cursor = events(client, admin)[-1]["id"]
    stop = threading.Event()

    def writer(n: int) -> None:
        for i in range(6):
            client.post("/auth/signup", json={"email": f"w{n}-{i}@example.com", "password": PASSWORD})

    writers = [threading.Thread(target=writer, args=(n,)) for n in range(4)]
    for thread in writers:
        thread.start()
    while not stop.is_set():
        if not any(t.is_alive() for t in writers):
            stop.set()
        batch = events(client, admin, after=cursor)
        seen.extend(e["id"] for e in batch)
        if batch:
            cursor = batch[-1]["id"]
    seen.extend(e["id"] for e in events(client, admin, after=cursor))
    signups = events(client, admin, type="user.signed_up")
    assert len(signups) == 24
    assert len(seen) == len(set(seen))
    assert {e["id"] for e in signups} <= set(seen)


def test_audit_events_are_pruned_after_retention(client: TestClient, admin: Account, db: Session) -> None:
    from auth_service.audit import prune_events

    register(client, "ada@example.com")
    old = db.exec(select(AuditEvent)).first()
    assert old is not None
    old.at = utcnow() - timedelta(days=400)
    db.add(old)
    db.commit()
    assert prune_events(db, 365) == 1


# --- webhooks ----------------------------------------------------------------------------


class Receiver:
    """A real HTTP server that records the webhooks it gets; can go down and come back."""

    def __init__(self) -> None:
        with socket.socket() as sock:
            sock.bind(("127.0.0.1", 0))
            self.port = sock.getsockname()[1]
        self.received: list[tuple[dict[str, str], bytes]] = []
        self.server: ThreadingHTTPServer | None = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}/hook"

    def start(self) -> None:
        receiver = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                body = self.rfile.read(int(self.headers["Content-Length"]))
                receiver.received.append((dict(self.headers), body))
                self.send_response(204)
                self.end_headers()

            def log_message(self, *args: Any) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", self.port), Handler)
        self.server.allow_reuse_address = True
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def stop(self) -> None:
        if self.server:
            self.server.shutdown()
            self.server.server_close()
            self.server = None


@pytest.fixture
def receiver() -> Iterator[Receiver]:
    receiver = Receiver()
    receiver.start()
    yield receiver
    receiver.stop()


@pytest.fixture
def settings_overrides(request: pytest.FixtureRequest) -> dict[str, Any]:
    if "receiver" not in request.fixturenames:
        return {}
    receiver: Receiver = request.getfixturevalue("receiver")
    return {"webhook_urls": receiver.url, "webhook_secret": WEBHOOK_SECRET, "webhook_timeout": 2}


def drain(app: FastAPI, later: timedelta = timedelta(0)) -> None:
    while deliver_due(app.state.engine, app.state.settings, utcnow() + later):
        pass


def check_signature(headers: dict[str, str], body: bytes) -> None:
    expected = "sha256=" + hmac.new(WEBHOOK_SECRET.encode(), body, hashlib.sha256).hexdigest()
    assert hmac.compare_digest(headers["X-Webhook-Signature"], expected)


def test_webhooks_survive_an_outage_and_arrive_once_signed(
    client: TestClient, app: FastAPI, receiver: Receiver, admin: Account
) -> None:
    register(client, "ada@example.com")
    drain(app)
    before = len(receiver.received)
    assert before >= 3  # admin login, ada's signup and login

    receiver.stop()
    register(client, "bob@example.com")
    client.post("/auth/login", data={"username": "bob@example.com", "password": "wrong password"})
    drain(app)  # fails: the receiver is down
    receiver.start()
    drain(app, later=timedelta(minutes=10))
    drain(app, later=timedelta(hours=3))  # nothing more goes out

    ids = [int(headers["X-Webhook-Id"]) for headers, _ in receiver.received]
    assert len(ids) == len(set(ids)), "an event was delivered twice"
    all_events = events(client, admin)
    assert sorted(ids) == [e["id"] for e in all_events]  # every event, once
    for headers, body in receiver.received:
        check_signature(headers, body)
        event = json.loads(body)
        assert event["id"] == int(headers["X-Webhook-Id"]) and headers["X-Webhook-Event"] == event["type"]
    types = {json.loads(body)["type"] for _, body in receiver.received[before:]}
    assert {"user.signed_up", "auth.login_succeeded", "auth.login_failed"} <= types


def test_webhooks_follow_standard_webhooks(client: TestClient, app: FastAPI, receiver: Receiver) -> None:
    """A receiver verifies with the `standardwebhooks` library, and refuses a tampered body,
    another id, or a replay outside its tolerance."""
    register(client, "ada@example.com")
    drain(app)
    assert receiver.received
    verifier = Webhook(WEBHOOK_SECRET.encode())
    for headers, body in receiver.received:
        lowered = {name.lower(): value for name, value in headers.items()}
        assert lowered["webhook-id"] == headers["X-Webhook-Id"]
        assert verifier.verify(body, lowered) == json.loads(body)
        with pytest.raises(WebhookVerificationError):
            verifier.verify(body.replace(b'"id":', b'"id": '), lowered)  # the same JSON, other bytes
        with pytest.raises(WebhookVerificationError):
            verifier.verify(body, {**lowered, "webhook-id": "999999"})
        stale = str(int(lowered["webhook-timestamp"]) - 3600)
        with pytest.raises(WebhookVerificationError):
            verifier.verify(body, {**lowered, "webhook-timestamp": stale})
