"""Email verification and password reset over real SMTP (aiosmtpd on a local port),
through the outbox: including SMTP being down and coming back, and two senders at once."""

import email
import logging
import re
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from datetime import timedelta
from email.message import Message
from pathlib import Path
from typing import Any

import pytest
from aiosmtpd.controller import Controller
from aiosmtpd.smtp import SMTP, Envelope
from aiosmtpd.smtp import Session as SMTPSession
from fastapi import FastAPI
from fastapi.testclient import TestClient
from sqlmodel import Session, col, select

from auth_service.config import Settings
from auth_service.db import make_engine
from auth_service.models import OneTimeToken, OutboxMessage, utcnow
from auth_service.outbox import deliver_due, run_sender
from tests.conftest import PASSWORD, ROOT, free_port, login, make_settings, service_env, signup

NEW_PASSWORD = "a brand new long password"


class Sink:
    """Collects what the SMTP server receives."""

    def __init__(self) -> None:
        self.messages: list[Message] = []

    async def handle_DATA(self, server: SMTP, session: SMTPSession, envelope: Envelope) -> str:
        assert isinstance(envelope.content, bytes)
        self.messages.append(email.message_from_bytes(envelope.content))
        return "250 OK"

    def to(self, address: str) -> list[Message]:
        return [m for m in self.messages if m["To"] == address]


class SMTPServer:
    def __init__(self, port: int) -> None:
        self.port = port
        self.sink = Sink()
        self.controller: Controller | None = None

    def start(self) -> None:
        self.controller = Controller(self.sink, hostname="127.0.0.1", port=self.port)
        self.controller.start()

    def stop(self) -> None:
        if self.controller is not None:
            self.controller.stop()
            self.controller = None


@pytest.fixture
def smtp() -> Iterator[SMTPServer]:
    server = SMTPServer(free_port())
    server.start()
    yield server
    server.stop()


@pytest.fixture
def settings_overrides(smtp: SMTPServer) -> dict[str, Any]:
    return {
        "email_backend": "smtp",
        "smtp_host": "127.0.0.1",
        "smtp_port": smtp.port,
        "smtp_timeout": 2,
        "public_url": "https://auth.example.test",
        "email_from": "Auth <auth@example.test>",
    }


def drain(app: FastAPI, later: timedelta = timedelta(0)) -> int:
    """Run the outbox until nothing is due (a round may queue more, e.g. a reset mail)."""
    delivered = 0
    for _ in range(10):
        done = deliver_due(app.state.engine, app.state.settings, utcnow() + later)
        if not done:
            return delivered
        delivered += done
    raise AssertionError("the outbox did not settle")


def text_of(message: Message) -> str:
    part = next(p for p in message.walk() if p.get_content_type() == "text/plain")
    payload = part.get_payload(decode=True)
    assert isinstance(payload, bytes)
    return payload.decode()


def token_in(message: Message) -> str:
    match = re.search(r"token=([A-Za-z0-9_-]+)", text_of(message))
    assert match, text_of(message)
    return match.group(1)


def test_signup_sends_a_verification_mail_that_verifies(client: TestClient, app: FastAPI, smtp: SMTPServer) -> None:
    signup(client, "ada@example.com")
    assert drain(app) == 1
    [message] = smtp.sink.to("ada@example.com")
    assert message["Subject"] == "Confirm your email address"
    assert message["From"] == "Auth <auth@example.test>"
    assert message.get_content_type() == "multipart/alternative"
    assert {p.get_content_type() for p in message.walk()} >= {"text/plain", "text/html"}
    assert "https://auth.example.test/verify-email?token=" in text_of(message)

    token = token_in(message)
    response = client.post("/auth/verify-email", json={"token": token})
    assert response.status_code == 200
    assert response.json()["is_verified"] is True
    again = client.post("/auth/verify-email", json={"token": token})
    assert again.status_code == 400 and again.json()["code"] == "INVALID_TOKEN"


def test_unknown_or_malformed_verification_token(client: TestClient) -> None:
    for token in ["nope", "x" * 512, "\x00"]:
        response = client.post("/auth/verify-email", json={"token": token})
        assert response.status_code == 400 and response.json()["code"] == "INVALID_TOKEN"
    assert client.post("/auth/verify-email", json={"token": ""}).status_code == 422


def test_new_verification_request_supersedes_the_old_link(client: TestClient, app: FastAPI, smtp: SMTPServer) -> None:
    signup(client, "ada@example.com")
    drain(app)
    first = token_in(smtp.sink.messages[-1])
    headers = {"Authorization": f"Bearer {login(client, 'ada@example.com')['access_token']}"}
    response = client.post("/auth/verify-email/request", headers=headers)
    assert response.status_code == 202
    drain(app)
    assert len(smtp.sink.to("ada@example.com")) == 2
    second = token_in(smtp.sink.messages[-1])
    assert client.post("/auth/verify-email", json={"token": first}).status_code == 400
    assert client.post("/auth/verify-email", json={"token": second}).status_code == 200
    assert client.post("/auth/verify-email/request").status_code == 401


def test_expired_verification_token(client: TestClient, app: FastAPI, smtp: SMTPServer, db: Session) -> None:
    signup(client, "ada@example.com")
    drain(app)
    for row in db.exec(select(OneTimeToken)).all():
        row.expires_at = utcnow() - timedelta(seconds=1)
        db.add(row)
    db.commit()
    response = client.post("/auth/verify-email", json={"token": token_in(smtp.sink.messages[-1])})
    assert response.status_code == 400 and response.json()["code"] == "TOKEN_EXPIRED"


def test_email_change_needs_verifying_again(client: TestClient, app: FastAPI, smtp: SMTPServer) -> None:
    signup(client, "ada@example.com")
    drain(app)
    old_token = token_in(smtp.sink.messages[-1])
    headers = {"Authorization": f"Bearer {login(client, 'ada@example.com')['access_token']}"}
    changed = client.patch(
        "/users/me", json={"email": "Ada.New@Example.com", "current_password": PASSWORD}, headers=headers
    )
    assert changed.status_code == 200 and changed.json()["is_verified"] is False
    drain(app)
    [message] = smtp.sink.to("ada.new@example.com")
    [notice] = [m for m in smtp.sink.to("ada@example.com") if m["Subject"] == "Your email address was changed"]
    assert "ada.new@example.com" in text_of(notice) and "token=" not in text_of(notice)
    assert client.post("/auth/verify-email", json={"token": old_token}).status_code == 400
    verified = client.post("/auth/verify-email", json={"token": token_in(message)})
    assert verified.status_code == 200 and verified.json()["email"] == "ada.new@example.com"


@pytest.fixture
def require_verified(settings_overrides: dict[str, Any]) -> None:
    settings_overrides["require_verified_email"] = True


@pytest.mark.usefixtures("require_verified")
def test_login_after_verification_when_required(client: TestClient, app: FastAPI, smtp: SMTPServer) -> None:
    signup(client, "ada@example.com")
    refused = client.post("/auth/login", data={"username": "ada@example.com", "password": PASSWORD})
    assert refused.status_code == 403 and refused.json()["code"] == "EMAIL_NOT_VERIFIED"
    drain(app)
    client.post("/auth/verify-email", json={"token": token_in(smtp.sink.messages[-1])})
    login(client, "ada@example.com")


def test_password_reset_flow(client: TestClient, app: FastAPI, smtp: SMTPServer) -> None:
    signup(client, "ada@example.com")
    drain(app)
    old_session = login(client, "ada@example.com")
    response = client.post("/auth/password-reset/request", json={"email": "ADA@example.com"})
    assert response.status_code == 202
    drain(app)
    [message] = [m for m in smtp.sink.to("ada@example.com") if m["Subject"] == "Reset your password"]
    assert "https://auth.example.test/reset-password?token=" in text_of(message)
    token = token_in(message)

    weak = client.post("/auth/password-reset/confirm", json={"token": token, "new_password": "password"})
    assert weak.status_code == 422 and weak.json()["code"] == "WEAK_PASSWORD"
    ok = client.post("/auth/password-reset/confirm", json={"token": token, "new_password": NEW_PASSWORD})
    assert ok.status_code == 200

    bad = client.post("/auth/login", data={"username": "ada@example.com", "password": PASSWORD})
    assert bad.status_code == 400
    login(client, "ada@example.com", NEW_PASSWORD)
    # every session ended: access and refresh tokens of the old login are dead
    old_headers = {"Authorization": f"Bearer {old_session['access_token']}"}
    assert client.get("/users/me", headers=old_headers).status_code == 401
    assert client.post("/auth/refresh", json={"refresh_token": old_session["refresh_token"]}).status_code == 401
    reused = client.post("/auth/password-reset/confirm", json={"token": token, "new_password": "yet another password"})
    assert reused.status_code == 400 and reused.json()["code"] == "INVALID_TOKEN"


def test_reset_request_answers_the_same_for_unknown_emails(client: TestClient, app: FastAPI, smtp: SMTPServer) -> None:
    signup(client, "ada@example.com")
    drain(app)
    known = client.post("/auth/password-reset/request", json={"email": "ada@example.com"})
    unknown = client.post("/auth/password-reset/request", json={"email": "nobody@example.com"})
    assert known.status_code == unknown.status_code == 202
    assert known.json() == unknown.json()
    drain(app)
    assert smtp.sink.to("nobody@example.com") == []
    assert len(smtp.sink.to("ada@example.com")) == 2  # verification + reset


def test_reset_request_with_invalid_email_is_422(client: TestClient) -> None:
    assert client.post("/auth/password-reset/request", json={"email": "not an email"}).status_code == 422


def test_password_change_voids_outstanding_reset_links(client: TestClient, app: FastAPI, smtp: SMTPServer) -> None:
    signup(client, "ada@example.com")
    client.post("/auth/password-reset/request", json={"email": "ada@example.com"})
    drain(app)
    token = token_in(smtp.sink.messages[-1])
    headers = {"Authorization": f"Bearer {login(client, 'ada@example.com')['access_token']}"}
    changed = client.post(
        "/users/me/password", json={"current_password": PASSWORD, "new_password": NEW_PASSWORD}, headers=headers
    )
    assert changed.status_code == 204
    response = client.post("/auth/password-reset/confirm", json={"token": token, "new_password": "some other password"})
    assert response.status_code == 400


def test_new_reset_request_supersedes_older_links(client: TestClient, app: FastAPI, smtp: SMTPServer) -> None:
    signup(client, "ada@example.com")
    client.post("/auth/password-reset/request", json={"email": "ada@example.com"})
    drain(app)
    first = token_in(smtp.sink.messages[-1])
    client.post("/auth/password-reset/request", json={"email": "ada@example.com"})
    drain(app)
    second = token_in(smtp.sink.messages[-1])
    assert (
        client.post("/auth/password-reset/confirm", json={"token": first, "new_password": NEW_PASSWORD}).status_code
        == 400
    )
    assert (
        client.post("/auth/password-reset/confirm", json={"token": second, "new_password": NEW_PASSWORD}).status_code
        == 200
    )


def test_expired_reset_token(client: TestClient, app: FastAPI, smtp: SMTPServer, db: Session) -> None:
    signup(client, "ada@example.com")
    client.post("/auth/password-reset/request", json={"email": "ada@example.com"})
    drain(app)
    for row in db.exec(select(OneTimeToken)).all():
        row.expires_at = utcnow() - timedelta(seconds=1)
        db.add(row)
    db.commit()
    body = {"token": token_in(smtp.sink.messages[-1]), "new_password": NEW_PASSWORD}
    response = client.post("/auth/password-reset/confirm", json=body)
    assert response.status_code == 400 and response.json()["code"] == "TOKEN_EXPIRED"


def test_mail_waits_while_smtp_is_down_and_goes_once_it_is_back(
    client: TestClient, app: FastAPI, smtp: SMTPServer, db: Session
) -> None:
    smtp.stop()
    signup(client, "ada@example.com")  # the signup itself succeeds
    client.post("/auth/password-reset/request", json={"email": "ada@example.com"})
    assert drain(app) == 1  # only the reset request was handled; both mails failed
    pending = db.exec(select(OutboxMessage).where(col(OutboxMessage.sent_at).is_(None))).all()
    assert len(pending) == 2 and all(row.attempts == 1 and row.last_error for row in pending)
    assert drain(app) == 0  # backing off: nothing is due yet

    smtp.start()
    assert drain(app, later=timedelta(minutes=5)) == 2
    assert sorted(m["Subject"] for m in smtp.sink.messages) == ["Confirm your email address", "Reset your password"]
    assert drain(app, later=timedelta(hours=2)) == 0  # sent once, never again
    db.expire_all()
    sent = db.exec(select(OutboxMessage).where(col(OutboxMessage.kind) == "email")).all()
    assert all(row.sent_at is not None and "text" not in row.payload for row in sent)  # body (with token) wiped


def test_two_senders_deliver_each_mail_once(client: TestClient, app: FastAPI, smtp: SMTPServer) -> None:
    for i in range(12):
        signup(client, f"user{i}@example.com")
    barrier = threading.Barrier(2)

    def sender() -> None:
        barrier.wait()
        drain(app)

    threads = [threading.Thread(target=sender) for _ in range(2)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert sorted(m["To"] for m in smtp.sink.messages) == sorted(f"user{i}@example.com" for i in range(12))


@pytest.fixture
def with_sender_thread(settings_overrides: dict[str, Any]) -> None:
    settings_overrides.update(outbox_worker=True, outbox_poll_seconds=0.05)


@pytest.mark.usefixtures("with_sender_thread")
def test_in_app_sender_thread_delivers(client: TestClient, smtp: SMTPServer) -> None:
    signup(client, "ada@example.com")
    deadline = time.monotonic() + 10
    while not smtp.sink.messages and time.monotonic() < deadline:
        time.sleep(0.05)
    assert [m["To"] for m in smtp.sink.messages] == ["ada@example.com"]


def test_send_mail_command(client: TestClient, smtp: SMTPServer, settings: Settings, database_url: str) -> None:
    signup(client, "ada@example.com")
    env = service_env(database_url, EMAIL_BACKEND="smtp", SMTP_HOST="127.0.0.1", SMTP_PORT=str(smtp.port))
    command = [sys.executable, "-m", "auth_service", "send-mail", "--once"]
    result = subprocess.run(command, cwd=ROOT, env=env, capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, result.stderr
    assert "delivered 1" in result.stdout
    assert [m["To"] for m in smtp.sink.messages] == ["ada@example.com"]


def test_admin_created_unverified_user_gets_a_mail(
    client: TestClient, app: FastAPI, smtp: SMTPServer, admin: Any
) -> None:
    body = {"email": "new@example.com", "password": "a long enough password"}
    assert client.post("/users", json=body, headers=admin.headers).status_code == 201
    verified = {"email": "ok@example.com", "password": "a long enough password", "is_verified": True}
    assert client.post("/users", json=verified, headers=admin.headers).status_code == 201
    drain(app)
    assert [m["To"] for m in smtp.sink.messages] == ["new@example.com"]


def test_the_sender_says_why_the_database_fails(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    """Not every database error is an outage: an unmigrated file says so, once."""
    settings = make_settings(f"sqlite:///{tmp_path / 'empty.db'}", outbox_poll_seconds=0.01)
    engine = make_engine(settings.database_url)
    stop = threading.Event()
    sender = threading.Thread(target=run_sender, args=(engine, settings, stop), daemon=True)
    with caplog.at_level(logging.INFO, logger="auth_service.outbox"):
        sender.start()
        time.sleep(0.3)
        stop.set()
        sender.join(timeout=5)
    engine.dispose()
    warnings = [r.getMessage() for r in caplog.records if r.name == "auth_service.outbox"]
    assert len(warnings) == 1 and "no such table" in warnings[0]
