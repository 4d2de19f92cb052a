"""The hosted pages behind mailed links, through HTTP as a browser uses them: a GET never
spends the token, the POST does the work, every outcome is a page with the right status,
and the pages carry a strict CSP, load nothing from elsewhere and hold no script."""

import base64
import hashlib
import re
from datetime import timedelta
from pathlib import Path
from typing import Any

import httpx
import pytest
from fastapi import FastAPI
from fastapi.testclient import TestClient
from sqlmodel import Session, select

from auth_service.config import Settings
from auth_service.email_flows import handle_reset_request
from auth_service.main import create_app
from auth_service.models import OneTimeToken, utcnow
from auth_service.pages import csp_hash
from tests.conftest import (
    PASSWORD,
    Account,
    LiveServer,
    clear_database,
    login,
    mailed_token,
    make_settings,
    queued_mails,
    signup,
)

NEW_PASSWORD = "a brand new long password"


def verification_token(app: FastAPI, email: str) -> str:
    return mailed_token(queued_mails(app, email)[-1])


def reset_token(client: TestClient, app: FastAPI, settings: Settings, email: str) -> str:
    """Ask for a reset over HTTP, then do the outbox sender's part: queue the mail."""
    assert client.post("/auth/password-reset/request", json={"email": email}).status_code == 202
    handle_reset_request(app.state.engine, settings, {"email": email})
    [mail] = [m for m in queued_mails(app, email) if m["subject"] == "Reset your password"]
    return mailed_token(mail)


def is_page(response: httpx.Response, status: int, *words: str) -> None:
    assert response.status_code == status, response.text
    assert response.headers["content-type"].startswith("text/html")
    for word in words:
        assert word in response.text, (word, response.text)


def expire_tokens(db: Session) -> None:
    for row in db.exec(select(OneTimeToken)).all():
        row.expires_at = utcnow() - timedelta(seconds=1)
        db.add(row)
    db.commit()


def me(client: TestClient, email: str, password: str = PASSWORD) -> dict[str, Any]:
    headers = {"Authorization": f"Bearer {login(client, email, password)['access_token']}"}
    body: dict[str, Any] = client.get("/users/me", headers=headers).json()
    return body


# --- verification ----------------------------------------------------------------------


def test_opening_the_verify_link_spends_nothing_and_the_button_verifies(
    client: TestClient, app: FastAPI, user: Account
) -> None:
    token = verification_token(app, user.email)
    for _ in range(2):  # a mail scanner, then the person
        page = client.get("/verify-email", params={"token": token})
        is_page(page, 200, "Confirm your email address", user.email)
        assert f'<input type="hidden" name="token" value="{token}">' in page.text
        assert '<form method="post" action="verify-email">' in page.text
    assert me(client, user.email)["is_verified"] is False

    done = client.post("/verify-email", data={"token": token})
    is_page(done, 200, "Your email address is confirmed")
    assert me(client, user.email)["is_verified"] is True

    is_page(client.post("/verify-email", data={"token": token}), 400, "This link cannot be used")
    is_page(client.get("/verify-email", params={"token": token}), 400, "already been used")


def test_the_json_api_still_takes_a_token_whose_page_was_opened(
    client: TestClient, app: FastAPI, user: Account
) -> None:
    token = verification_token(app, user.email)
    client.get("/verify-email", params={"token": token})
    response = client.post("/auth/verify-email", json={"token": token})
    assert response.status_code == 200 and response.json()["is_verified"] is True


def test_an_expired_verify_link(client: TestClient, app: FastAPI, user: Account, db: Session) -> None:
    token = verification_token(app, user.email)
    expire_tokens(db)
    for response in (
        client.get("/verify-email", params={"token": token}),
        client.post("/verify-email", data={"token": token}),
    ):
        is_page(response, 400, "This link has expired", "24 hours", "ask for a new confirmation mail")
    assert me(client, user.email)["is_verified"] is False


def test_unknown_missing_and_misdirected_tokens_are_pages(
    client: TestClient, app: FastAPI, settings: Settings, user: Account
) -> None:
    reset = reset_token(client, app, settings, user.email)
    answers = {
        "unknown": client.get("/verify-email", params={"token": "nope"}),
        "huge": client.get("/reset-password", params={"token": "x" * 5000}),
        "no token": client.get("/verify-email"),
        "empty token": client.get("/reset-password?token="),
        "a reset token on the verify page": client.get("/verify-email", params={"token": reset}),
        "post without a token": client.post("/verify-email"),
        "post reset without fields": client.post("/reset-password"),
        "post a JSON body": client.post("/reset-password", json={"token": reset, "new_password": NEW_PASSWORD}),
        "post a NUL": client.post("/verify-email", data={"token": "\x00"}),
    }
    for name, response in answers.items():
        assert response.status_code == 400, name
        is_page(response, 400, "This link cannot be used")
    # none of that spent the real reset link
    is_page(client.get("/reset-password", params={"token": reset}), 200, "Choose a new password")


# --- password reset --------------------------------------------------------------------


def test_reset_weak_password_keeps_the_form_then_a_strong_one_works(
    client: TestClient, app: FastAPI, settings: Settings, user: Account
) -> None:
    token = reset_token(client, app, settings, user.email)
    for _ in range(2):
        form = client.get("/reset-password", params={"token": token})
        is_page(form, 200, "Choose a new password", user.email, 'autocomplete="new-password"')

    weak = client.post(
        "/reset-password", data={"token": token, "new_password": "password", "confirm_password": "password"}
    )
    is_page(weak, 422, "Your password was not changed", "Password is too common.")
    assert f'name="token" value="{token}"' in weak.text  # the link still works from this form
    assert 'value="password"' not in weak.text  # the refused password is not echoed back
    assert "<title>Error: " in weak.text
    assert 'aria-describedby="new-password-hint new-password-error"' in weak.text
    assert 'id="new-password-error"' in weak.text and 'aria-invalid="true"' in weak.text
    login(client, user.email, PASSWORD)  # nothing changed

    short = client.post("/reset-password", data={"token": token, "new_password": "ab", "confirm_password": "ab"})
    is_page(short, 422, "at least 8 characters")

    typo = {"token": token, "new_password": NEW_PASSWORD, "confirm_password": NEW_PASSWORD + "x"}
    is_page(client.post("/reset-password", data=typo), 422, "The two passwords are not the same.")

    strong = {"token": token, "new_password": NEW_PASSWORD, "confirm_password": NEW_PASSWORD}
    is_page(client.post("/reset-password", data=strong), 200, "Your password has been changed")
    login(client, user.email, NEW_PASSWORD)
    refused = client.post("/auth/login", data={"username": user.email, "password": PASSWORD})
    assert refused.status_code == 400
    assert client.get("/users/me", headers=user.headers).status_code == 401  # every session ended

    again = {"token": token, "new_password": "another long password", "confirm_password": "another long password"}
    is_page(client.post("/reset-password", data=again), 400, "This link cannot be used")
    is_page(client.get("/reset-password", params={"token": token}), 400, "This link cannot be used")
    login(client, user.email, NEW_PASSWORD)


def test_an_expired_reset_link(
    client: TestClient, app: FastAPI, settings: Settings, user: Account, db: Session
) -> None:
    token = reset_token(client, app, settings, user.email)
    expire_tokens(db)
    is_page(client.get("/reset-password", params={"token": token}), 400, "This link has expired", "1 hour")
    form = {"token": token, "new_password": NEW_PASSWORD, "confirm_password": NEW_PASSWORD}
    is_page(client.post("/reset-password", data=form), 400, "This link has expired")
    login(client, user.email, PASSWORD)


# --- what every page is made of --------------------------------------------------------


def every_page(client: TestClient, app: FastAPI, settings: Settings, user: Account) -> dict[str, httpx.Response]:
    verify = verification_token(app, user.email)
    reset = reset_token(client, app, settings, user.email)
    weak = {"token": reset, "new_password": "password", "confirm_password": "password"}
    strong = {"token": reset, "new_password": NEW_PASSWORD, "confirm_password": NEW_PASSWORD}
    return {
        "verify form": client.get("/verify-email", params={"token": verify}),
        "verified": client.post("/verify-email", data={"token": verify}),
        "reset form": client.get("/reset-password", params={"token": reset}),
        "weak": client.post("/reset-password", data=weak),
        "changed": client.post("/reset-password", data=strong),
        "used": client.get("/reset-password", params={"token": reset}),
        "invalid": client.get("/verify-email", params={"token": "nope"}),
    }


def test_pages_carry_a_strict_csp_and_the_headers_for_a_token_in_the_url(
    client: TestClient, app: FastAPI, settings: Settings, user: Account
) -> None:
    for name, page in every_page(client, app, settings, user).items():
        policy = dict(part.strip().split(" ", 1) for part in page.headers["content-security-policy"].split(";"))
        assert policy["default-src"] == "'none'" and policy["frame-ancestors"] == "'none'", name
        assert policy["form-action"] == "'self'" and policy["base-uri"] == "'none'", name
        assert "script-src" not in policy and "unsafe" not in page.headers["content-security-policy"], name
        # the inline stylesheet is allowed by its hash, and only by it
        [css] = re.findall(r"<style>(.*?)</style>", page.text, re.S)
        digest = base64.b64encode(hashlib.sha256(css.encode()).digest()).decode()
        assert policy["style-src"] == f"'sha256-{digest}'", name
        assert page.headers["x-frame-options"] == "DENY", name
        assert page.headers["cache-control"] == "no-store", name
        assert page.headers["referrer-policy"] == "no-referrer", name
        assert page.headers["x-robots-tag"] == "noindex, nofollow", name
        assert page.headers["x-content-type-options"] == "nosniff", name


def test_pages_hold_no_script_and_nothing_from_elsewhere(
    client: TestClient, app: FastAPI, settings: Settings, user: Account
) -> None:
    for name, page in every_page(client, app, settings, user).items():
        html = page.text
        tags = re.findall(r"<[^>]+>", html)
        assert "<script" not in html.lower() and not [t for t in tags if re.search(r"\son\w+=", t)], name
        assert not re.search(r"(?:https?:)?//", html), (name, re.findall(r"(?:https?:)?//\S+", html))
        assert not re.search(r"<(?:link|img|iframe|object|embed)\b", html), name
        assert html.startswith("<!doctype html>") and '<html lang="en">' in html, name
        assert html.count("<h1") == 1 and '<meta name="robots" content="noindex, nofollow">' in html, name
        assert '<meta name="viewport" content="width=device-width, initial-scale=1">' in html, name
        for field_id in re.findall(r'<input type="password" id="([a-z-]+)"', html):
            assert f'<label for="{field_id}">' in html, (name, field_id)


@pytest.mark.parametrize("settings_overrides", [{"product_name": "Acme <Login> & Co"}])
def test_pages_name_the_product_escaped(client: TestClient, app: FastAPI, user: Account) -> None:
    page = client.get("/verify-email", params={"token": verification_token(app, user.email)})
    is_page(page, 200, "<title>Confirm your email address – Acme &lt;Login&gt; &amp; Co</title>")
    assert "<Login>" not in page.text


def test_templates_dir_restyles_the_pages_and_the_csp_follows(tmp_path: Path, database_url: str) -> None:
    (tmp_path / "pages").mkdir()
    css = "body { background: #fffbe6; }\n"
    (tmp_path / "pages" / "style.css").write_text(css)
    (tmp_path / "pages" / "link_invalid.html").write_text(
        '{% extends "pages/_layout.html" %}{% block heading %}Dieser Link geht nicht{% endblock %}'
    )
    app = create_app(make_settings(database_url, templates_dir=tmp_path))
    clear_database(app.state.engine)
    with TestClient(app) as client:
        page = client.get("/verify-email", params={"token": "nope"})
        is_page(page, 400, "<h1>Dieser Link geht nicht</h1>", f"<style>{css}</style>")
        assert csp_hash(css) in page.headers["content-security-policy"]
        signup(client, "ada@example.com")
        form = client.get("/verify-email", params={"token": verification_token(app, "ada@example.com")})
        is_page(form, 200, "Confirm my email address", f"<style>{css}</style>")  # the package's page, our style
    app.state.engine.dispose()


# --- asking for a new link, for teams without a front end ------------------------------------


def test_an_expired_reset_link_leads_to_a_new_one(
    client: TestClient, app: FastAPI, settings: Settings, db: Session
) -> None:
    signup(client, "ada@example.com")
    token = reset_token(client, app, settings, "ada@example.com")
    expire_tokens(db)
    expired = client.get("/reset-password", params={"token": token})
    is_page(expired, 400, 'href="forgot-password"')
    is_page(client.get("/forgot-password"), 200, "Forgot your password?", 'autocomplete="email"')
    for address in ("Ada@Example.com", "ghost@example.com"):  # the same answer either way
        sent = client.post("/forgot-password", data={"email": address})
        is_page(sent, 202, "If an account uses", address.lower(), "1 hour")
    handle_reset_request(app.state.engine, settings, {"email": "ada@example.com"})
    [mail] = [m for m in queued_mails(app, "ada@example.com") if m["subject"] == "Reset your password"][-1:]
    fresh = client.get("/reset-password", params={"token": mailed_token(mail)})
    is_page(fresh, 200, "Choose a new password")


@pytest.mark.parametrize("settings_overrides", [{"mail_email_limit": "1/hour"}])
def test_asking_for_a_link_is_checked_and_limited_like_the_api(client: TestClient) -> None:
    for bad in ("", "not an address", "a@b"):
        is_page(client.post("/forgot-password", data={"email": bad}), 422, "Enter an email address")
    is_page(client.post("/forgot-password"), 422, "Enter an email address")
    is_page(client.post("/forgot-password", data={"email": "ada@example.com"}), 202)
    limited = client.post("/forgot-password", data={"email": "ada@example.com"})
    is_page(limited, 429, "Too many requests", "ada@example.com")
    assert int(limited.headers["retry-after"]) > 0  # as the API's 429 says it
    assert "default-src 'none'" in limited.headers["content-security-policy"]


def test_link_checkers_may_send_head_and_spend_nothing(
    live_server: LiveServer, client: TestClient, user: Account
) -> None:
    """HEAD is GET without a body, on a real server (uvicorn leaves the body out)."""
    token = verification_token(live_server.app, user.email)
    for path in ("/verify-email", "/reset-password", "/forgot-password", "/health", "/docs"):
        answer = httpx.head(f"{live_server.url}{path}", params={"token": token})
        assert answer.status_code in (200, 400) and answer.content == b"", path
        assert int(answer.headers["content-length"]) > 0, path  # what a GET would send
    me = httpx.head(f"{live_server.url}/users/me", headers=user.headers)
    assert me.status_code == 200 and me.content == b""
    metrics = httpx.get(f"{live_server.url}/metrics").text  # counted under HEAD and the route
    assert 'method="HEAD",route="/health"' in metrics or 'route="/health",method="HEAD"' in metrics
    is_page(client.post("/verify-email", data={"token": token}), 200, "Your email address is confirmed")


def test_a_password_that_arrived_garbled_is_refused(
    client: TestClient, app: FastAPI, settings: Settings, user: Account
) -> None:
    """Bytes that are not UTF-8 reach us as U+FFFD: that is not the password that was typed."""
    token = reset_token(client, app, settings, user.email)
    body = f"token={token}&new_password=%FF%FE-a-long-password&confirm_password=%FF%FE-a-long-password"
    headers = {"content-type": "application/x-www-form-urlencoded"}
    garbled = client.post("/reset-password", content=body, headers=headers)
    is_page(garbled, 422, "Your password was not changed", "could not be read")
    login(client, user.email, PASSWORD)  # nothing changed
