"""One error shape everywhere; bad input is a clear 4xx that changes nothing; headers."""

import json
from collections.abc import Iterator
from typing import Any

import httpx
import pytest
from fastapi.testclient import TestClient
from sqlmodel import Session, select

from auth_service.config import Settings
from auth_service.main import create_app
from auth_service.models import User
from tests.conftest import PASSWORD, Account
from tests.conftest import error as assert_error

JSON = {"Content-Type": "application/json"}
MAX_BODY_BYTES = 65536  # the default of MAX_BODY_BYTES


def assert_validation_list(response: httpx.Response, case: object = None) -> None:
    """422 VALIDATION_ERROR with FastAPI's list of problems, none of them echoing the input."""
    body = assert_error(response, 422, "VALIDATION_ERROR", case)
    assert isinstance(body["detail"], list) and body["detail"], (case, body)
    for item in body["detail"]:
        assert {"type", "loc", "msg"} <= set(item), (case, item)
        assert "input" not in item, (case, item)


def users(db: Session) -> list[User]:
    db.expire_all()
    return list(db.exec(select(User)).all())


def padded_signup(size: int, email: str = "pad@example.com") -> bytes:
    """A valid signup body of exactly `size` bytes (an unknown field carries the padding)."""
    body = {"email": email, "password": PASSWORD, "padding": ""}
    body["padding"] = "x" * (size - len(json.dumps(body).encode()))
    encoded = json.dumps(body).encode()
    assert len(encoded) == size
    return encoded


def chunked(data: bytes, size: int = 4096) -> Iterator[bytes]:
    """A generator body: httpx sends it without Content-Length (Transfer-Encoding: chunked)."""
    for start in range(0, len(data), size):
        yield data[start : start + size]


# --- 404, 405 ----------------------------------------------------------------------------


def test_404_and_405(client: TestClient) -> None:
    assert assert_error(client.get("/nope"), 404, "NOT_FOUND")["detail"]
    assert_error(client.get("/users/me/nothing-here"), 404, "NOT_FOUND")
    response = client.put("/users/me")
    assert_error(response, 405, "METHOD_NOT_ALLOWED")
    assert "allow" in response.headers
    health = client.post("/health")
    assert_error(health, 405, "METHOD_NOT_ALLOWED")
    assert health.headers["allow"] == "GET"


# --- 422: malformed JSON, wrong types, wrong shapes ---------------------------------------


MALFORMED = [
    b"{bad json",
    b'{"email": "a@example.com", "password": ',  # truncated
    b"[]",
    b'[{"email": "ada@example.com", "password": "correct horse battery staple"}]',  # an array, not an object
    b'"text"',
    b"null",
    b"42",
    b'{"email": 5, "password": []}',
    b'{"email": true, "password": "correct horse battery staple"}',
    b'{"email": "ada@example.com", "password": 12345678901}',
    b'{"email": "ada@example.com", "password": "correct horse battery staple", "full_name": 123}',
    b'{"email": "ada@example.com", "password": "correct horse battery staple", "full_name": {"a": 1}}',
    b'{"email": NaN, "password": "correct horse battery staple"}',
    b'{"email": "a@example.com"}',
    b"{}",
]


def test_malformed_bodies_are_422(client: TestClient, db: Session) -> None:
    for content in MALFORMED:
        response = client.post("/auth/signup", content=content, headers=JSON)
        assert_validation_list(response, content)
    assert users(db) == []


def test_json_sent_as_plain_text_is_422(client: TestClient, db: Session) -> None:
    content = json.dumps({"email": "ada@example.com", "password": PASSWORD})
    assert_validation_list(client.post("/auth/signup", content=content, headers={"Content-Type": "text/plain"}))
    assert users(db) == []


UNPARSEABLE = {
    "not-utf8": b"\xff\xfe\x00",
    "deeply-nested": b"[" * 20_000 + b"]" * 20_000,  # deep enough to exhaust the parser's recursion
    "huge-integer": b'{"email": ' + b"1" * 5000 + b', "password": "x"}',  # past Python's digit limit
}


def test_unparseable_bodies_are_a_clean_4xx(client: TestClient, db: Session) -> None:
    for case, content in UNPARSEABLE.items():
        response = client.post("/auth/signup", content=content, headers=JSON)
        assert response.status_code in (400, 422), (case, response.text)
        assert set(response.json()) == {"detail", "code"} and response.json()["code"] == "VALIDATION_ERROR", case
        assert "Traceback" not in response.text
    assert users(db) == []


BAD_FIELDS: dict[str, dict[str, Any]] = {
    "nul-in-local-part": {"email": "ada\x00@example.com", "password": PASSWORD},
    "nul-after-domain": {"email": "ada@example.com\x00", "password": PASSWORD},
    "nul-in-full-name": {"email": "ada@example.com", "password": PASSWORD, "full_name": "Ada\x00Lovelace"},
    "full-name-only-nul": {"email": "ada@example.com", "password": PASSWORD, "full_name": "\x00"},
    "full-name-256": {"email": "ada@example.com", "password": PASSWORD, "full_name": "x" * 256},
    "email-local-300": {"email": "a" * 300 + "@example.com", "password": PASSWORD},
    # 324 characters, every label within its own limit: refused for its total length
    "email-324": {"email": "a" * 64 + "@" + ".".join(["b" * 63] * 4) + ".com", "password": PASSWORD},
    "email-400-no-at": {"email": "a" * 400, "password": PASSWORD},
    "password-5000": {"email": "ada@example.com", "password": "p" * 5000},
}


def test_bad_fields_are_422_and_change_nothing(client: TestClient, db: Session) -> None:
    for case, body in BAD_FIELDS.items():
        response = client.post("/auth/signup", json=body)
        assert_validation_list(response, case)
        assert "input" not in response.text, case
        assert body["password"] not in response.text, case
    assert users(db) == []


def test_a_full_name_of_255_is_accepted(client: TestClient) -> None:
    """The boundary of the 256 above: the limit is 255, not something smaller."""
    response = client.post(
        "/auth/signup", json={"email": "ada@example.com", "password": PASSWORD, "full_name": "x" * 255}
    )
    assert response.status_code == 201, response.text
    assert response.json()["full_name"] == "x" * 255


def test_bad_profile_update_is_422_and_changes_nothing(client: TestClient, user: Account) -> None:
    before = client.get("/users/me", headers=user.headers).json()
    for full_name in ["Ada\x00Lovelace", "x" * 256, 42, ["Ada"]]:
        response = client.patch("/users/me", json={"full_name": full_name}, headers=user.headers)
        assert_validation_list(response, full_name)
    assert client.get("/users/me", headers=user.headers).json() == before


def test_bad_list_parameters_are_422(client: TestClient, admin: Account) -> None:
    for params in [{"limit": "0"}, {"limit": "201"}, {"limit": "abc"}, {"offset": "-1"}, {"offset": str(10**30)}]:
        assert_validation_list(client.get("/users", params=params, headers=admin.headers), params)


def test_ids_that_are_not_uuids_are_422(client: TestClient, admin: Account) -> None:
    assert_validation_list(client.get("/users/not-a-uuid", headers=admin.headers))
    assert_validation_list(client.delete("/auth/sessions/1 OR 1=1", headers=admin.headers))


# --- 413 ---------------------------------------------------------------------------------


def test_oversized_body_is_413(client: TestClient, db: Session) -> None:
    big = b'{"email": "' + b"a" * 70_000 + b'"}'
    assert_error(client.post("/auth/signup", content=big, headers=JSON), 413, "PAYLOAD_TOO_LARGE")

    def chunks() -> Iterator[bytes]:  # no Content-Length: counted while streaming
        yield b'{"email": "'
        for _ in range(20):
            yield b"a" * 5000
        yield b'"}'

    streamed = client.post("/auth/signup", content=chunks(), headers=JSON)
    assert_error(streamed, 413, "PAYLOAD_TOO_LARGE")
    assert users(db) == []


def test_an_otherwise_valid_signup_over_the_limit_is_413_and_creates_nothing(client: TestClient, db: Session) -> None:
    body = padded_signup(MAX_BODY_BYTES + 1)
    with_length = client.post("/auth/signup", content=body, headers=JSON)
    assert_error(with_length, 413, "PAYLOAD_TOO_LARGE")
    streamed = client.post("/auth/signup", content=chunked(body), headers=JSON)
    assert "content-length" not in streamed.request.headers  # really sent chunked
    assert_error(streamed, 413, "PAYLOAD_TOO_LARGE")
    assert users(db) == []


def test_a_body_of_exactly_the_limit_is_accepted(client: TestClient) -> None:
    response = client.post("/auth/signup", content=padded_signup(MAX_BODY_BYTES), headers=JSON)
    assert response.status_code == 201, response.text
    streamed = client.post(
        "/auth/signup", content=chunked(padded_signup(MAX_BODY_BYTES, "pad2@example.com")), headers=JSON
    )
    assert streamed.status_code == 201, streamed.text


def test_an_oversized_login_form_is_413(client: TestClient) -> None:
    response = client.post("/auth/login", data={"username": "ada@example.com", "password": "p" * 70_000})
    assert_error(response, 413, "PAYLOAD_TOO_LARGE")


@pytest.mark.parametrize("settings_overrides", [{"max_body_bytes": 2048}])
def test_the_limit_follows_max_body_bytes(client: TestClient) -> None:
    assert client.post("/auth/signup", content=padded_signup(2048), headers=JSON).status_code == 201
    response = client.post("/auth/signup", content=padded_signup(2049, "pad2@example.com"), headers=JSON)
    assert_error(response, 413, "PAYLOAD_TOO_LARGE")
    assert "2048" in response.json()["detail"]


def test_413_answers_carry_the_security_headers(client: TestClient) -> None:
    response = client.post("/auth/signup", content=padded_signup(MAX_BODY_BYTES + 1), headers=JSON)
    assert response.status_code == 413
    assert response.headers.get("x-content-type-options") == "nosniff"
    assert response.headers.get("cache-control") == "no-store"


# --- 500 ---------------------------------------------------------------------------------


def app_with_a_broken_route(settings: Settings) -> Any:
    app = create_app(settings)

    @app.get("/boom")
    def boom() -> None:
        raise RuntimeError("secret internals at /srv/app/db.py line 42")

    return app


def test_unexpected_errors_are_a_bare_500(settings: Settings) -> None:
    app = app_with_a_broken_route(settings)
    with TestClient(app, raise_server_exceptions=False) as client:
        response = client.get("/boom")
    app.state.engine.dispose()
    assert response.status_code == 500
    assert response.json() == {"detail": "Internal server error.", "code": "INTERNAL_ERROR"}
    for leak in ("secret internals", "Traceback", "RuntimeError", "db.py"):
        assert leak not in response.text


def test_500_answers_carry_the_security_headers(settings: Settings) -> None:
    app = app_with_a_broken_route(settings)
    with TestClient(app, raise_server_exceptions=False) as client:
        response = client.get("/boom")
    app.state.engine.dispose()
    assert response.status_code == 500
    assert response.headers.get("x-content-type-options") == "nosniff"
    assert response.headers.get("cache-control") == "no-store"


# --- headers -----------------------------------------------------------------------------


def test_security_headers(client: TestClient, user: Account) -> None:
    answers = {
        "200": client.get("/users/me", headers=user.headers),
        "201": client.post("/auth/signup", json={"email": "bob@example.com", "password": PASSWORD}),
        "health": client.get("/health"),
        "400": client.post("/auth/login", data={"username": user.email, "password": "wrong password"}),
        "401": client.get("/users/me"),
        "404": client.get("/nope"),
        "405": client.put("/users/me"),
        "422": client.post("/auth/signup", content=b"{bad", headers=JSON),
        "204": client.post("/auth/logout", headers=user.headers),
    }
    for name, response in answers.items():
        assert response.headers.get("x-content-type-options") == "nosniff", name
        assert response.headers.get("cache-control") == "no-store", name
    docs = client.get("/docs")
    assert docs.status_code == 200 and docs.headers["x-content-type-options"] == "nosniff"


@pytest.mark.parametrize("settings_overrides", [{"cors_origins": "https://app.example.com"}])
def test_cors_only_from_configured_origins(client: TestClient) -> None:
    preflight = {"Access-Control-Request-Method": "GET", "Access-Control-Request-Headers": "authorization"}
    allowed = client.options("/users/me", headers={"Origin": "https://app.example.com", **preflight})
    assert allowed.headers["access-control-allow-origin"] == "https://app.example.com"
    assert "access-control-allow-credentials" not in allowed.headers
    refused = client.options("/users/me", headers={"Origin": "https://evil.example.com", **preflight})
    assert "access-control-allow-origin" not in refused.headers


# --- injection-looking text is just text -------------------------------------------------

HOSTILE = ["' OR 1=1 --", "<script>alert(1)</script>", "'; DROP TABLE users; --", "Robert'); --", "%_\\"]


def test_hostile_full_names_are_stored_literally(client: TestClient, db: Session) -> None:
    for number, name in enumerate(HOSTILE):
        body = {"email": f"mallory{number}@example.com", "password": PASSWORD, "full_name": name}
        response = client.post("/auth/signup", json=body)
        assert response.status_code == 201, (name, response.text)
        assert response.json()["full_name"] == name
    assert sorted(u.full_name or "" for u in users(db)) == sorted(HOSTILE)


def test_injection_looking_strings_are_just_text(client: TestClient, user: Account, admin: Account) -> None:
    name = "'; DROP TABLE users; -- <script>alert(1)</script>"
    assert client.patch("/users/me", json={"full_name": name}, headers=user.headers).json()["full_name"] == name
    for q in ["' OR 1=1 --", "%", "_", "\\", "<script>", '" OR ""="', "admin'--"]:
        response = client.get("/users", params={"q": q}, headers=admin.headers)
        assert response.status_code == 200, (q, response.text)
    assert client.get("/users", params={"q": "' OR 1=1 --"}, headers=admin.headers).json()["count"] == 0
    found = client.get("/users", params={"q": "<script>"}, headers=admin.headers).json()
    assert found["count"] == 1 and found["data"][0]["full_name"] == name
    assert client.get("/users", params={"q": "%"}, headers=admin.headers).json()["count"] == 0  # no wildcard
    assert client.get("/users", params={"q": "a\x00b"}, headers=admin.headers).status_code == 422
    assert client.get("/users", headers=admin.headers).json()["count"] == 2  # nothing dropped


def test_injection_looking_login_names_are_a_plain_invalid_grant(client: TestClient, user: Account) -> None:
    for username in ["' OR 1=1 --", "ada@example.com' --", "<script>@example.com"]:
        response = client.post("/auth/login", data={"username": username, "password": "' OR '1'='1"})
        assert response.status_code == 400, response.text
        assert response.json()["code"] == "INVALID_CREDENTIALS"
