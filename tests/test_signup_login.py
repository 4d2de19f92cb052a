"""Signup and the OAuth2 password grant, happy and unhappy."""

import pytest
from fastapi import FastAPI
from fastapi.testclient import TestClient
from sqlmodel import Session, select

from auth_service.config import Settings
from auth_service.main import create_app
from auth_service.models import User
from tests.conftest import PASSWORD, login, make_settings, signup

PUBLIC_FIELDS = {
    "id", "email", "full_name", "is_active", "is_verified", "is_superuser", "mfa_enabled", "roles", "created_at",
    "last_login_at",
}  # fmt: skip


def test_signup_returns_public_user_without_secrets(client: TestClient) -> None:
    body = signup(client, "  Ada.Lovelace@Example.COM ", full_name="Ada Lovelace")
    assert set(body) == PUBLIC_FIELDS
    assert body["email"] == "ada.lovelace@example.com"
    assert body["full_name"] == "Ada Lovelace"
    assert body["is_active"] is True and body["is_verified"] is False and body["is_superuser"] is False
    assert body["roles"] == []
    assert body["created_at"].endswith(("Z", "+00:00"))


def test_signup_stores_an_argon2id_hash(client: TestClient, db: Session) -> None:
    signup(client, "ada@example.com")
    user = db.exec(select(User)).one()
    assert user.hashed_password.startswith("$argon2id$")
    assert PASSWORD not in user.hashed_password


@pytest.mark.parametrize("second", ["ada@example.com", "ADA@example.com", " ada@EXAMPLE.com"])
def test_signup_same_email_any_case_is_409(client: TestClient, second: str) -> None:
    signup(client, "ada@example.com")
    response = client.post("/auth/signup", json={"email": second, "password": PASSWORD})
    assert response.status_code == 409
    assert response.json()["code"] == "EMAIL_TAKEN"


@pytest.mark.parametrize("email", ["bob@host.local", "bob@corp.internal", "bob@office.lan", "bob@ci.test"])
def test_intranet_domains_are_accepted(client: TestClient, email: str) -> None:
    assert signup(client, email.upper())["email"] == email


@pytest.mark.parametrize("email", ["not-an-email", "a@b", "@example.com", "a b@example.com", "a\x00b@example.com", ""])
def test_invalid_email_is_422(client: TestClient, email: str, db: Session) -> None:
    response = client.post("/auth/signup", json={"email": email, "password": PASSWORD})
    assert response.status_code == 422
    assert response.json()["code"] == "VALIDATION_ERROR"
    assert db.exec(select(User)).all() == []


@pytest.mark.parametrize(
    ("password", "reason"),
    [
        ("short1!", "at least 8"),
        ("x" * 129, "at most 128"),
        ("password123", "too common"),
        ("Qwerty123", "too common"),
        ("my-ada.lovelace-pw", "email"),
    ],
)
def test_weak_passwords_are_refused(client: TestClient, password: str, reason: str, db: Session) -> None:
    response = client.post("/auth/signup", json={"email": "ada.lovelace@example.com", "password": password})
    assert response.status_code == 422
    body = response.json()
    assert body["code"] == "WEAK_PASSWORD"
    assert reason in body["detail"]
    assert password not in response.text
    assert db.exec(select(User)).all() == []


def test_any_unicode_password_works(client: TestClient) -> None:
    password = "пароль-密码-🔑-ok"
    signup(client, "uni@example.com", password)
    assert login(client, "uni@example.com", password)["token_type"] == "bearer"


def test_password_is_nfkc_normalised(client: TestClient) -> None:
    signup(client, "nfkc@example.com", "ｆｕｌｌｗｉｄｔｈ secret")  # fullwidth letters
    login(client, "nfkc@example.com", "fullwidth secret")


def test_validation_errors_never_echo_the_password(client: TestClient) -> None:
    response = client.post("/auth/signup", json={"email": "bad", "password": "hunter2-secret-value"})
    assert response.status_code == 422
    assert "hunter2-secret-value" not in response.text


@pytest.mark.parametrize("settings_overrides", [{"allow_signup": False}])
def test_signup_disabled(client: TestClient) -> None:
    response = client.post("/auth/signup", json={"email": "ada@example.com", "password": PASSWORD})
    assert response.status_code == 403
    assert response.json()["code"] == "SIGNUP_DISABLED"


def test_login_returns_rfc6749_token_response(client: TestClient) -> None:
    signup(client, "ada@example.com")
    response = client.post("/auth/login", data={"username": "ADA@example.com", "password": PASSWORD})
    assert response.status_code == 200
    assert response.headers["cache-control"] == "no-store"
    body = response.json()
    assert set(body) == {"access_token", "token_type", "expires_in", "refresh_token"}
    assert body["token_type"] == "bearer"
    assert body["expires_in"] == 30 * 60
    assert len(body["refresh_token"]) >= 43  # 256 bits, base64url


def test_login_with_swagger_form_fields(client: TestClient) -> None:
    signup(client, "ada@example.com")
    data = {"grant_type": "password", "username": "ada@example.com", "password": PASSWORD, "scope": ""}
    assert client.post("/auth/login", data=data).status_code == 200


def test_login_records_last_login(client: TestClient, user: object) -> None:
    tokens = login(client, "ada@example.com")
    me = client.get("/users/me", headers={"Authorization": f"Bearer {tokens['access_token']}"}).json()
    assert me["last_login_at"] is not None


@pytest.mark.parametrize(
    ("username", "password"),
    [
        ("ada@example.com", "wrong password"),
        ("nobody@example.com", PASSWORD),
        ("not an email", PASSWORD),
        ("ada@example.com\x00", PASSWORD),  # NUL: PostgreSQL refuses it in text, so it must not get that far
        ("\x00\x01", PASSWORD),
    ],
)
def test_bad_login_is_the_same_400_invalid_grant(client: TestClient, username: str, password: str) -> None:
    signup(client, "ada@example.com")
    response = client.post("/auth/login", data={"username": username, "password": password})
    assert response.status_code == 400
    assert response.headers["cache-control"] == "no-store"
    assert response.json() == {
        "detail": "Incorrect email or password.",
        "code": "INVALID_CREDENTIALS",
        "error": "invalid_grant",
        "error_description": "Incorrect email or password.",
    }


@pytest.mark.parametrize(
    ("data", "error"),
    [
        ({"username": "ada@example.com"}, "invalid_request"),
        ({"password": PASSWORD}, "invalid_request"),
        ({}, "invalid_request"),
        ({"grant_type": "authorization_code", "code": "x"}, "unsupported_grant_type"),
        ({"grant_type": "client_credentials", "client_id": "svc_nobody", "client_secret": "x"}, "invalid_client"),
        ({"grant_type": "refresh_token"}, "invalid_request"),
    ],
)
def test_malformed_token_requests(client: TestClient, data: dict[str, str], error: str) -> None:
    response = client.post("/auth/login", data=data)
    assert response.status_code == 400
    assert response.json()["error"] == error


def test_login_with_json_body_is_invalid_request(client: TestClient) -> None:
    response = client.post("/auth/login", json={"username": "ada@example.com", "password": PASSWORD})
    assert response.status_code == 400
    assert response.json()["error"] == "invalid_request"


def test_inactive_user_cannot_log_in(client: TestClient, db: Session) -> None:
    signup(client, "ada@example.com")
    user = db.exec(select(User)).one()
    user.is_active = False
    db.add(user)
    db.commit()
    response = client.post("/auth/login", data={"username": "ada@example.com", "password": PASSWORD})
    assert response.status_code == 400
    assert response.json()["code"] == "INACTIVE_USER"


@pytest.mark.parametrize("settings_overrides", [{"require_verified_email": True}])
def test_unverified_user_refused_when_verification_required(client: TestClient) -> None:
    signup(client, "ada@example.com")
    wrong = client.post("/auth/login", data={"username": "ada@example.com", "password": "wrong password"})
    assert wrong.json()["code"] == "INVALID_CREDENTIALS"  # the password is checked first
    response = client.post("/auth/login", data={"username": "ada@example.com", "password": PASSWORD})
    assert response.status_code == 403
    assert response.json()["code"] == "EMAIL_NOT_VERIFIED"


def test_hash_is_upgraded_on_login_when_parameters_change(app: FastAPI, database_url: str, db: Session) -> None:
    with TestClient(app) as client:
        signup(client, "ada@example.com")
    old_hash = db.exec(select(User.hashed_password)).one()
    assert "t=1" in old_hash
    stronger: Settings = make_settings(database_url, argon2_time_cost=2)
    with TestClient(create_app(stronger)) as client:
        login(client, "ada@example.com")
    db.expire_all()
    new_hash = db.exec(select(User.hashed_password)).one()
    assert new_hash != old_hash and "t=2" in new_hash
