"""Your own account over HTTP: GET/PATCH/DELETE /users/me and POST /users/me/password."""

import uuid
from datetime import UTC, datetime, timedelta
from typing import Any

import httpx
from fastapi import FastAPI
from fastapi.testclient import TestClient
from jose import jwt
from sqlmodel import Session

from auth_service.models import User
from tests.conftest import PASSWORD, Account, error, login, register, sign_as_the_service, signup
from tests.support import TEST_SECRET

PUBLIC_FIELDS = {
    "id", "email", "full_name", "is_active", "is_verified", "is_superuser", "mfa_enabled", "roles", "created_at",
    "last_login_at",
}  # fmt: skip
NEW_PASSWORD = "a brand new passphrase"
ALG_NONE_HEADER = "eyJhbGciOiJub25lIiwidHlwIjoiSldUIn0"  # {"alg":"none","typ":"JWT"}


def me(client: TestClient, account: Account) -> dict[str, Any]:
    response = client.get("/users/me", headers=account.headers)
    assert response.status_code == 200, response.text
    body: dict[str, Any] = response.json()
    return body


def login_status(client: TestClient, email: str, password: str) -> int:
    response: httpx.Response = client.post("/auth/login", data={"username": email, "password": password})
    return response.status_code


def claims_for(account: Account, **overrides: Any) -> dict[str, Any]:
    now = datetime.now(UTC)
    claims: dict[str, Any] = {
        "sub": account.id,
        "sid": str(uuid.uuid4()),
        "jti": uuid.uuid4().hex,
        "iat": int(now.timestamp()),
        "exp": int((now + timedelta(minutes=5)).timestamp()),
        "iss": "auth_service",
        "aud": "auth_service",
        "type": "access",
        "roles": [],
        "permissions": [],
    }
    claims.update(overrides)
    return {key: value for key, value in claims.items() if value is not None}


# --- GET /users/me -----------------------------------------------------------------------


def test_me_returns_the_public_user(client: TestClient, user: Account) -> None:
    response = client.get("/users/me", headers=user.headers)
    assert response.status_code == 200
    body = response.json()
    assert set(body) == PUBLIC_FIELDS
    assert body["id"] == user.id and body["email"] == user.email
    assert body["is_active"] is True and body["is_superuser"] is False and body["is_verified"] is False
    assert body["roles"] == []
    assert body["created_at"].endswith(("Z", "+00:00")) and body["last_login_at"].endswith(("Z", "+00:00"))
    assert "hashed_password" not in response.text and "$argon2" not in response.text


def test_me_without_a_bearer_token_is_401_not_authenticated(client: TestClient, user: Account) -> None:
    for headers in [
        {},
        {"Authorization": ""},
        {"Authorization": "Bearer"},
        {"Authorization": "Basic YWRhQGV4YW1wbGUuY29tOnB3"},
        {"Authorization": f"Basic {user.access_token}"},  # a real token under another scheme
        {"Authorization": f"Token {user.access_token}"},
        {"Authorization": user.access_token},  # no scheme at all
    ]:
        response = client.get("/users/me", headers=headers)
        error(response, 401, "NOT_AUTHENTICATED")
        assert response.headers["www-authenticate"] == "Bearer", headers


def test_me_with_a_bad_token_is_401_invalid_token(client: TestClient, user: Account) -> None:
    real = user.access_token
    header, payload, signature = real.split(".")
    tokens = {
        "garbage": "not-a-token-at-all",
        "three-dots": "a.b.c",
        "truncated": real[:-5],
        "tampered-payload": f"{header}.{payload[:10]}{'B' if payload[10] == 'A' else 'A'}{payload[11:]}.{signature}",
        "wrong-key": jwt.encode(claims_for(user), "another-secret-key-that-is-long-enough-012345"),
        "alg-none": f"{ALG_NONE_HEADER}.{payload}.",
        "wrong-audience": jwt.encode(claims_for(user, aud="someone-else"), TEST_SECRET),
        "wrong-issuer": jwt.encode(claims_for(user, iss="someone-else"), TEST_SECRET),
        "refresh-type": jwt.encode(claims_for(user, type="refresh"), TEST_SECRET),
        "no-sid": jwt.encode(claims_for(user, sid=None), TEST_SECRET),
        "non-uuid-sub": jwt.encode(claims_for(user, sub="1 OR 1=1"), TEST_SECRET),
        "unknown-session": jwt.encode(claims_for(user), TEST_SECRET),  # well signed, but no such session
        "refresh-token-as-bearer": user.refresh_token,
    }
    for kind, token in tokens.items():
        response = client.get("/users/me", headers={"Authorization": f"Bearer {token}"})
        assert response.status_code == 401, kind
        error(response, 401, "INVALID_TOKEN")
        assert response.headers["www-authenticate"].startswith("Bearer"), kind
        assert 'error="invalid_token"' in response.headers["www-authenticate"], kind
    assert me(client, user)["id"] == user.id  # the real token still works


def test_me_with_an_expired_token_is_401_token_expired(client: TestClient, user: Account, app: FastAPI) -> None:
    past = datetime.now(UTC) - timedelta(hours=1)
    token = sign_as_the_service(app, claims_for(user, exp=int(past.timestamp()), iat=int(past.timestamp()) - 60))
    response = client.get("/users/me", headers={"Authorization": f"Bearer {token}"})
    error(response, 401, "TOKEN_EXPIRED")
    assert 'error="invalid_token"' in response.headers["www-authenticate"]


# --- PATCH /users/me ---------------------------------------------------------------------


def test_patch_me_changes_the_full_name(client: TestClient, user: Account) -> None:
    response = client.patch("/users/me", json={"full_name": "  Ada King  "}, headers=user.headers)
    assert response.status_code == 200
    body = response.json()
    assert set(body) == PUBLIC_FIELDS
    assert body["full_name"] == "Ada King" and body["email"] == user.email
    assert me(client, user)["full_name"] == "Ada King"
    cleared = client.patch("/users/me", json={"full_name": None}, headers=user.headers)
    assert cleared.status_code == 200 and cleared.json()["full_name"] is None
    assert me(client, user)["full_name"] is None


def test_patch_me_with_an_empty_body_changes_nothing(client: TestClient, user: Account) -> None:
    before = me(client, user)
    response = client.patch("/users/me", json={}, headers=user.headers)
    assert response.status_code == 200
    assert response.json() == before


def test_patch_me_changes_the_email(client: TestClient, user: Account, db: Session) -> None:
    stored = db.get(User, uuid.UUID(user.id))
    assert stored is not None
    stored.is_verified = True
    db.add(stored)
    db.commit()
    assert me(client, user)["is_verified"] is True

    response = client.patch(
        "/users/me", json={"email": "  Ada.King@Example.COM ", "current_password": PASSWORD}, headers=user.headers
    )
    assert response.status_code == 200, response.text
    body = response.json()
    assert body["email"] == "ada.king@example.com"
    assert body["is_verified"] is False
    assert me(client, user)["email"] == "ada.king@example.com"  # the token goes on working
    assert login_status(client, user.email, PASSWORD) == 400
    login(client, "ada.king@example.com")
    login(client, "ADA.KING@example.com")


def test_patch_me_to_the_same_email_in_another_case_keeps_it_verified(
    client: TestClient, user: Account, db: Session
) -> None:
    stored = db.get(User, uuid.UUID(user.id))
    assert stored is not None
    stored.is_verified = True
    db.add(stored)
    db.commit()
    response = client.patch(
        "/users/me", json={"email": user.email.upper(), "current_password": PASSWORD}, headers=user.headers
    )
    assert response.status_code == 200
    assert response.json()["email"] == user.email and response.json()["is_verified"] is True


def test_patch_me_to_a_taken_email_is_409_and_changes_nothing(client: TestClient, user: Account) -> None:
    bob = signup(client, "bob@example.com")
    before = me(client, user)
    for taken in ["bob@example.com", "BOB@Example.com", "  bob@example.com  "]:
        response = client.patch(
            "/users/me",
            json={"email": taken, "full_name": "Changed", "current_password": PASSWORD},
            headers=user.headers,
        )
        error(response, 409, "EMAIL_TAKEN")
        assert me(client, user) == before, taken
    login(client, user.email)
    login(client, "bob@example.com")
    assert bob["email"] == "bob@example.com"


BAD_PATCHES: list[dict[str, Any]] = [
    {"email": None},
    {"email": "not-an-email"},
    {"email": ""},
    {"email": "ada\x00@example.com"},
    {"email": 42},
    {"full_name": "Ada\x00King"},
    {"full_name": "Ada\x1bKing"},
    {"full_name": "Ada\nKing"},
    {"full_name": "Ada\x7fKing"},
    {"full_name": "x" * 256},
    {"full_name": ["Ada"]},
    {"full_name": "x" * 256, "email": "fresh@example.com"},  # a valid change goes down with the invalid one
    {"full_name": "Fine", "email": None},
]


def test_patch_me_with_bad_input_is_422_and_changes_nothing(client: TestClient, user: Account) -> None:
    before = me(client, user)
    for body in BAD_PATCHES:
        response = client.patch("/users/me", json=body, headers=user.headers)
        assert response.status_code == 422, body
        error(response, 422, "VALIDATION_ERROR")
        assert me(client, user) == before, body
    for raw in [b'{"full_name": "Ada', b"[]", b'"Ada"', b"\xff\xfe"]:  # not a JSON object
        response = client.patch("/users/me", content=raw, headers={**user.headers, "Content-Type": "application/json"})
        assert response.status_code == 422, raw
        error(response, 422, "VALIDATION_ERROR")
    assert me(client, user) == before
    login(client, user.email)


def test_patch_me_full_name_with_a_c1_control_or_a_bidi_override_is_422(client: TestClient, user: Account) -> None:
    before = me(client, user)
    # NEL; CSI, a terminal escape; RIGHT-TO-LEFT OVERRIDE; LEFT-TO-RIGHT ISOLATE ... POP
    for name in ["Ada\x85King", "Ada\x9b31mKing", "Ada\u202egnik", "Ada \u2066King\u2069"]:
        response = client.patch("/users/me", json={"full_name": name}, headers=user.headers)
        error(response, 422, "VALIDATION_ERROR")
        assert me(client, user) == before


def test_patch_me_full_name_of_255_characters_is_fine(client: TestClient, user: Account) -> None:
    name = "é" * 255
    response = client.patch("/users/me", json={"full_name": name}, headers=user.headers)
    assert response.status_code == 200
    assert me(client, user)["full_name"] == name


def test_patch_me_ignores_admin_fields(client: TestClient, user: Account) -> None:
    other = str(uuid.uuid4())
    body = {
        "full_name": "Ada",
        "is_superuser": True,
        "is_verified": True,
        "is_active": False,
        "id": other,
        "roles": ["admin"],
        "hashed_password": "$argon2id$v=19$m=1024,t=1,p=1$AAAA$AAAA",
        "password": "sneaky new password",
    }
    response = client.patch("/users/me", json=body, headers=user.headers)
    assert response.status_code == 200
    after = me(client, user)
    assert after["full_name"] == "Ada" and after["id"] == user.id
    assert after["is_superuser"] is False and after["is_verified"] is False and after["is_active"] is True
    assert after["roles"] == []
    error(client.get("/users", headers=user.headers), 403, "PERMISSION_DENIED")
    login(client, user.email)  # the password did not change
    assert login_status(client, user.email, "sneaky new password") == 400


# --- POST /users/me/password -------------------------------------------------------------


def test_change_password_with_a_wrong_current_password_is_400(client: TestClient, user: Account) -> None:
    body = {"current_password": "not my password", "new_password": NEW_PASSWORD}
    response = client.post("/users/me/password", json=body, headers=user.headers)
    error(response, 400, "INVALID_CREDENTIALS")
    assert "not my password" not in response.text and NEW_PASSWORD not in response.text
    login(client, user.email, PASSWORD)
    assert login_status(client, user.email, NEW_PASSWORD) == 400


def test_change_password_to_a_weak_one_is_422(client: TestClient, user: Account) -> None:
    for new in ["short", "password123", "x" * 129, "ada-is-my-name-ok"]:  # the last holds the email's local part
        body = {"current_password": PASSWORD, "new_password": new}
        response = client.post("/users/me/password", json=body, headers=user.headers)
        assert response.status_code == 422, new
        error(response, 422, "WEAK_PASSWORD")
        assert new not in response.text
    login(client, user.email, PASSWORD)


def test_change_password_with_missing_fields_is_422(client: TestClient, user: Account) -> None:
    for body in [
        {},
        {"current_password": PASSWORD},
        {"new_password": NEW_PASSWORD},
        {"current_password": None, "new_password": NEW_PASSWORD},
        {"current_password": PASSWORD, "new_password": ""},
    ]:
        response = client.post("/users/me/password", json=body, headers=user.headers)
        assert response.status_code == 422, body
        error(response, 422, "VALIDATION_ERROR")
        assert PASSWORD not in response.text and NEW_PASSWORD not in response.text
    login(client, user.email, PASSWORD)
    assert login_status(client, user.email, NEW_PASSWORD) == 400


def test_change_password_ends_every_other_session_at_once(client: TestClient, user: Account) -> None:
    other = login(client, user.email)  # a second session, say on another device
    other_headers = {"Authorization": f"Bearer {other['access_token']}"}
    assert client.get("/users/me", headers=other_headers).status_code == 200

    body = {"current_password": PASSWORD, "new_password": NEW_PASSWORD}
    response = client.post("/users/me/password", json=body, headers=user.headers)
    assert response.status_code == 204 and response.content == b""

    assert login_status(client, user.email, PASSWORD) == 400
    login(client, user.email, NEW_PASSWORD)
    assert me(client, user)["id"] == user.id  # this session goes on
    error(client.get("/users/me", headers=other_headers), 401, "INVALID_TOKEN")
    refused = client.post("/auth/refresh", json={"refresh_token": other["refresh_token"]})
    assert refused.status_code == 401 and refused.json()["code"] == "INVALID_TOKEN"
    grant = client.post("/auth/login", data={"grant_type": "refresh_token", "refresh_token": other["refresh_token"]})
    assert grant.status_code == 400 and grant.json()["error"] == "invalid_grant"
    refreshed = client.post("/auth/refresh", json={"refresh_token": user.refresh_token})
    assert refreshed.status_code == 200  # the current session's refresh token still works


# --- DELETE /users/me --------------------------------------------------------------------


def test_delete_me_with_a_wrong_password_is_400_and_keeps_the_account(client: TestClient, user: Account) -> None:
    response = client.request("DELETE", "/users/me", json={"password": "not my password"}, headers=user.headers)
    error(response, 400, "INVALID_CREDENTIALS")
    assert me(client, user)["id"] == user.id
    login(client, user.email)


def test_delete_me_without_a_password_is_422(client: TestClient, user: Account) -> None:
    for body in [None, {}, {"password": None}, {"password": ""}]:
        response = client.request("DELETE", "/users/me", json=body, headers=user.headers)
        assert response.status_code == 422, body
        error(response, 422, "VALIDATION_ERROR")
    assert me(client, user)["id"] == user.id


def test_delete_me_removes_the_account(client: TestClient, user: Account) -> None:
    other = login(client, user.email)
    response = client.request("DELETE", "/users/me", json={"password": PASSWORD}, headers=user.headers)
    assert response.status_code == 204 and response.content == b""

    response = client.get("/users/me", headers=user.headers)
    error(response, 401, "INVALID_TOKEN")
    assert 'error="invalid_token"' in response.headers["www-authenticate"]
    error(client.get("/users/me", headers={"Authorization": f"Bearer {other['access_token']}"}), 401, "INVALID_TOKEN")
    assert client.post("/auth/refresh", json={"refresh_token": user.refresh_token}).status_code == 401
    failed = client.post("/auth/login", data={"username": user.email, "password": PASSWORD})
    assert failed.status_code == 400 and failed.json()["code"] == "INVALID_CREDENTIALS"

    again = signup(client, user.email.upper())
    assert again["email"] == user.email and again["id"] != user.id
    fresh = register(client, "carol@example.com")
    assert me(client, fresh)["email"] == "carol@example.com"
    login(client, user.email)


def test_changes_to_me_need_a_token(client: TestClient, user: Account) -> None:
    for method, path, body in [
        ("PATCH", "/users/me", {"full_name": "x"}),
        ("POST", "/users/me/password", {"current_password": PASSWORD, "new_password": NEW_PASSWORD}),
        ("DELETE", "/users/me", {"password": PASSWORD}),
    ]:
        response = client.request(method, path, json=body)
        error(response, 401, "NOT_AUTHENTICATED")
        assert response.headers["www-authenticate"] == "Bearer"
    assert me(client, user)["full_name"] is None
    login(client, user.email, PASSWORD)
