"""One error shape everywhere; bad input is a clear 4xx that changes nothing; headers."""

from collections.abc import Iterator
from typing import Any

import pytest
from fastapi.testclient import TestClient
from sqlmodel import Session, select

from auth_service.config import Settings
from auth_service.main import create_app
from auth_service.models import User
from tests.conftest import PASSWORD, Account


def assert_error(response: Any, status: int, code: str) -> None:
    assert response.status_code == status, response.text
    body = response.json()
    assert set(body) == {"detail", "code"} and body["code"] == code


def test_404_and_405(client: TestClient) -> None:
    assert_error(client.get("/nope"), 404, "NOT_FOUND")
    response = client.put("/users/me")
    assert_error(response, 405, "METHOD_NOT_ALLOWED")
    assert "allow" in response.headers


@pytest.mark.parametrize(
    "content",
    [b"{bad json", b"[]", b'"text"', b"null", b'{"email": 5, "password": []}', b'{"email": "a@example.com"}'],
)
def test_malformed_bodies_are_422(client: TestClient, db: Session, content: bytes) -> None:
    response = client.post("/auth/signup", content=content, headers={"Content-Type": "application/json"})
    assert_error(response, 422, "VALIDATION_ERROR")
    assert isinstance(response.json()["detail"], list)
    assert all("input" not in item for item in response.json()["detail"])
    assert db.exec(select(User)).all() == []


def test_non_utf8_body_is_a_clean_4xx(client: TestClient) -> None:
    response = client.post("/auth/signup", content=b"\xff\xfe\x00", headers={"Content-Type": "application/json"})
    assert response.status_code in (400, 422) and response.json()["code"] == "VALIDATION_ERROR"


@pytest.mark.parametrize(
    "body",
    [
        {"email": "ada@example.com", "password": PASSWORD, "full_name": "Ada\x00Lovelace"},
        {"email": "ada@example.com", "password": PASSWORD, "full_name": "x" * 256},
        {"email": "a" * 300 + "@example.com", "password": PASSWORD},
        {"email": "ada@example.com", "password": "p" * 5000},
    ],
)
def test_bad_fields_are_422_and_change_nothing(client: TestClient, db: Session, body: dict[str, Any]) -> None:
    response = client.post("/auth/signup", json=body)
    assert_error(response, 422, "VALIDATION_ERROR")
    assert "input" not in response.text
    assert db.exec(select(User)).all() == []


def test_oversized_body_is_413(client: TestClient) -> None:
    big = b'{"email": "' + b"a" * 70_000 + b'"}'
    assert_error(
        client.post("/auth/signup", content=big, headers={"Content-Type": "application/json"}), 413, "PAYLOAD_TOO_LARGE"
    )

    def chunks() -> Iterator[bytes]:  # no Content-Length: counted while streaming
        yield b'{"email": "'
        for _ in range(20):
            yield b"a" * 5000
        yield b'"}'

    streamed = client.post("/auth/signup", content=chunks(), headers={"Content-Type": "application/json"})
    assert_error(streamed, 413, "PAYLOAD_TOO_LARGE")


def test_injection_looking_strings_are_just_text(client: TestClient, user: Account, admin: Account) -> None:
    name = "'; DROP TABLE users; -- <script>alert(1)</script>"
    assert client.patch("/users/me", json={"full_name": name}, headers=user.headers).json()["full_name"] == name
    for q in ["' OR 1=1 --", "%", "_", "\\", "<script>"]:
        response = client.get("/users", params={"q": q}, headers=admin.headers)
        assert response.status_code == 200
    assert client.get("/users", params={"q": "' OR 1=1 --"}, headers=admin.headers).json()["count"] == 0
    assert client.get("/users", params={"q": "<script>"}, headers=admin.headers).json()["count"] == 1
    assert client.get("/users", params={"q": "a\x00b"}, headers=admin.headers).status_code == 422


def test_unexpected_errors_are_a_bare_500(settings: Settings) -> None:
    app = create_app(settings)

    @app.get("/boom")
    def boom() -> None:
        raise RuntimeError("secret internals")

    with TestClient(app, raise_server_exceptions=False) as client:
        response = client.get("/boom")
    assert response.status_code == 500
    assert response.json() == {"detail": "Internal server error.", "code": "INTERNAL_ERROR"}
    assert "secret internals" not in response.text and "Traceback" not in response.text


def test_security_headers(client: TestClient, user: Account) -> None:
    for response in (client.get("/users/me", headers=user.headers), client.get("/nope"), client.get("/health")):
        assert response.headers["x-content-type-options"] == "nosniff"
        assert response.headers["cache-control"] == "no-store"
    assert client.get("/docs").headers["x-content-type-options"] == "nosniff"


@pytest.mark.parametrize("settings_overrides", [{"cors_origins": "https://app.example.com"}])
def test_cors_only_from_configured_origins(client: TestClient) -> None:
    preflight = {"Access-Control-Request-Method": "GET", "Access-Control-Request-Headers": "authorization"}
    allowed = client.options("/users/me", headers={"Origin": "https://app.example.com", **preflight})
    assert allowed.headers["access-control-allow-origin"] == "https://app.example.com"
    assert "access-control-allow-credentials" not in allowed.headers
    refused = client.options("/users/me", headers={"Origin": "https://evil.example.com", **preflight})
    assert "access-control-allow-origin" not in refused.headers
