"""Managing everyone's account over HTTP: GET/POST /users and GET/PATCH/DELETE /users/{id}."""

import uuid
from typing import Any

import httpx
from fastapi.testclient import TestClient

from tests.conftest import PASSWORD, Account, error, login, register, signup

PUBLIC_FIELDS = {
    "id", "email", "full_name", "is_active", "is_verified", "is_superuser", "mfa_enabled", "roles", "created_at",
    "last_login_at",
}  # fmt: skip
UNKNOWN_ID = "00000000-0000-4000-8000-000000000000"
FRESH_PASSWORD = "a long fresh password"


def get_user(client: TestClient, admin: Account, user_id: str) -> dict[str, Any]:
    response = client.get(f"/users/{user_id}", headers=admin.headers)
    assert response.status_code == 200, response.text
    body: dict[str, Any] = response.json()
    return body


def list_users(client: TestClient, admin: Account, **params: Any) -> dict[str, Any]:
    response = client.get("/users", params=params, headers=admin.headers)
    assert response.status_code == 200, response.text
    body: dict[str, Any] = response.json()
    assert set(body) == {"data", "count"}
    return body


def emails(page: dict[str, Any]) -> list[str]:
    return [item["email"] for item in page["data"]]


def login_response(client: TestClient, email: str, password: str) -> httpx.Response:
    response: httpx.Response = client.post("/auth/login", data={"username": email, "password": password})
    return response


def bearer(token: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}"}


# --- GET /users ----------------------------------------------------------------------------


def test_list_shape(client: TestClient, admin: Account) -> None:
    signup(client, "ann@example.com", full_name="Ann")
    response = client.get("/users", headers=admin.headers)
    assert response.status_code == 200
    body = response.json()
    assert set(body) == {"data", "count"}
    assert body["count"] == 2 and len(body["data"]) == 2
    for item in body["data"]:
        assert set(item) == PUBLIC_FIELDS
        assert item["created_at"].endswith(("Z", "+00:00"))
    assert sorted(emails(body)) == ["admin@example.com", "ann@example.com"]
    assert "hashed_password" not in response.text and "$argon2" not in response.text


def test_list_paging(client: TestClient, admin: Account) -> None:
    for index in range(6):
        signup(client, f"user{index}@example.com")
    everyone = list_users(client, admin)
    assert everyone["count"] == 7 and len(everyone["data"]) == 7

    first = list_users(client, admin, offset=0, limit=3)
    second = list_users(client, admin, offset=3, limit=3)
    third = list_users(client, admin, offset=6, limit=3)
    past = list_users(client, admin, offset=50, limit=3)
    assert [page["count"] for page in (first, second, third, past)] == [7, 7, 7, 7]  # the total, not the page
    assert [len(page["data"]) for page in (first, second, third, past)] == [3, 3, 1, 0]
    paged = emails(first) + emails(second) + emails(third)
    assert paged == emails(everyone)  # a stable order: no user twice, none skipped
    assert len(set(paged)) == 7
    assert emails(list_users(client, admin, limit=200)) == emails(everyone)
    assert emails(list_users(client, admin, offset=2, limit=1)) == [emails(everyone)[2]]


def test_list_bounds_are_422(client: TestClient, admin: Account) -> None:
    for params in [
        {"limit": 201},
        {"limit": 0},
        {"limit": -1},
        {"offset": -1},
        {"limit": "ten"},
        {"is_active": "no?"},
        {"q": "a\x00b"},
        {"q": "x" * 101},
    ]:
        response = client.get("/users", params=params, headers=admin.headers)
        assert response.status_code == 422, params
        error(response, 422, "VALIDATION_ERROR")


def test_list_search_by_part_of_email_or_name_any_case(client: TestClient, admin: Account) -> None:
    signup(client, "grace.hopper@navy.example.com", full_name="Grace Hopper")
    signup(client, "alan@example.com", full_name="Alan Turing")
    signup(client, "ada@example.com", full_name="Ada LOVELACE")
    assert emails(list_users(client, admin, q="HOPP")) == ["grace.hopper@navy.example.com"]
    assert emails(list_users(client, admin, q="navy.EXAMPLE")) == ["grace.hopper@navy.example.com"]
    assert emails(list_users(client, admin, q="turing")) == ["alan@example.com"]
    assert emails(list_users(client, admin, q="lovelace")) == ["ada@example.com"]
    assert emails(list_users(client, admin, q="  alan  ")) == ["alan@example.com"]
    found = list_users(client, admin, q="example.com")
    assert found["count"] == 4 and len(found["data"]) == 4
    limited = list_users(client, admin, q="example.com", limit=1)
    assert limited["count"] == 4 and len(limited["data"]) == 1
    nothing = list_users(client, admin, q="nobody-here")
    assert nothing == {"data": [], "count": 0}


def test_list_search_treats_wildcards_literally(client: TestClient, admin: Account) -> None:
    signup(client, "under_score@example.com", full_name="Plain")
    signup(client, "underxscore@example.com", full_name="Plain")
    signup(client, "percent@example.com", full_name="100% sure")
    signup(client, "back@example.com", full_name="back\\slash")
    signup(client, "other@example.com", full_name="Other")
    assert emails(list_users(client, admin, q="_")) == ["under_score@example.com"]
    assert emails(list_users(client, admin, q="under_score")) == ["under_score@example.com"]
    assert emails(list_users(client, admin, q="%")) == ["percent@example.com"]
    assert emails(list_users(client, admin, q="0% S")) == ["percent@example.com"]
    assert emails(list_users(client, admin, q="\\")) == ["back@example.com"]
    assert list_users(client, admin, q="%%")["count"] == 0
    assert list_users(client, admin, q="__")["count"] == 0


def test_list_filter_by_is_active(client: TestClient, admin: Account) -> None:
    ann = signup(client, "ann@example.com")
    signup(client, "bob@example.com")
    created = client.post(
        "/users",
        json={"email": "cat@example.com", "password": FRESH_PASSWORD, "is_active": False},
        headers=admin.headers,
    )
    assert created.status_code == 201
    assert client.patch(f"/users/{ann['id']}", json={"is_active": False}, headers=admin.headers).status_code == 200

    inactive = list_users(client, admin, is_active=False)
    assert inactive["count"] == 2 and sorted(emails(inactive)) == ["ann@example.com", "cat@example.com"]
    assert all(item["is_active"] is False for item in inactive["data"])
    active = list_users(client, admin, is_active=True)
    assert active["count"] == 2 and sorted(emails(active)) == ["admin@example.com", "bob@example.com"]
    assert list_users(client, admin)["count"] == 4
    assert emails(list_users(client, admin, is_active="false", q="ann")) == ["ann@example.com"]
    assert list_users(client, admin, is_active="true", q="ann")["count"] == 0


# --- who may do what -------------------------------------------------------------------------


def test_a_normal_user_cannot_manage_users(client: TestClient, admin: Account, user: Account) -> None:
    bob = register(client, "bob@example.com")
    attempts: list[tuple[str, str, Any]] = [
        ("GET", "/users", None),
        ("POST", "/users", {"email": "new@example.com", "password": FRESH_PASSWORD}),
        ("POST", "/users", {"email": "boss@example.com", "password": FRESH_PASSWORD, "is_superuser": True}),
        ("GET", f"/users/{bob.id}", None),
        ("GET", f"/users/{admin.id}", None),
        ("PATCH", f"/users/{bob.id}", {"full_name": "Hacked", "is_active": False}),
        ("PATCH", f"/users/{user.id}", {"is_superuser": True}),  # not even oneself
        ("DELETE", f"/users/{bob.id}", None),
        ("DELETE", f"/users/{admin.id}", None),
    ]
    for method, path, body in attempts:
        response = client.request(method, path, json=body, headers=user.headers)
        assert response.status_code == 403, (method, path)
        error(response, 403, "PERMISSION_DENIED")

    assert list_users(client, admin)["count"] == 3  # nobody was created or deleted
    bob_now = get_user(client, admin, bob.id)
    assert bob_now["full_name"] is None and bob_now["is_active"] is True
    assert get_user(client, admin, user.id)["is_superuser"] is False
    assert client.get("/users/me", headers=bob.headers).status_code == 200


def test_the_admin_endpoints_need_a_token(client: TestClient, admin: Account) -> None:
    for method, path in [("GET", "/users"), ("POST", "/users"), ("GET", f"/users/{admin.id}")]:
        response = client.request(method, path, json={} if method == "POST" else None)
        error(response, 401, "NOT_AUTHENTICATED")
        assert response.headers["www-authenticate"] == "Bearer"
    for method, path in [("PATCH", f"/users/{admin.id}"), ("DELETE", f"/users/{admin.id}")]:
        response = client.request(method, path, json={"full_name": "x"} if method == "PATCH" else None)
        error(response, 401, "NOT_AUTHENTICATED")
    assert get_user(client, admin, admin.id)["full_name"] is None


# --- POST /users ----------------------------------------------------------------------------


def test_create_user_honours_the_flags(client: TestClient, admin: Account) -> None:
    body = {
        "email": "  New.Person@Example.COM ",
        "password": FRESH_PASSWORD,
        "full_name": "New Person",
        "is_verified": True,
        "is_superuser": True,
        "is_active": True,
    }
    response = client.post("/users", json=body, headers=admin.headers)
    assert response.status_code == 201, response.text
    created = response.json()
    assert set(created) == PUBLIC_FIELDS
    assert created["email"] == "new.person@example.com" and created["full_name"] == "New Person"
    assert created["is_verified"] is True and created["is_superuser"] is True and created["is_active"] is True
    assert created["last_login_at"] is None
    assert FRESH_PASSWORD not in response.text and "$argon2" not in response.text
    assert get_user(client, admin, created["id"]) == created

    tokens = login(client, "new.person@example.com", FRESH_PASSWORD)
    assert client.get("/users", headers=bearer(tokens["access_token"])).status_code == 200  # a superuser


def test_create_user_defaults_and_an_inactive_user(client: TestClient, admin: Account) -> None:
    response = client.post(
        "/users", json={"email": "plain@example.com", "password": FRESH_PASSWORD}, headers=admin.headers
    )
    assert response.status_code == 201
    created = response.json()
    assert created["is_verified"] is False and created["is_superuser"] is False and created["is_active"] is True
    assert created["full_name"] is None and created["roles"] == []
    tokens = login(client, "plain@example.com", FRESH_PASSWORD)
    error(client.get("/users", headers=bearer(tokens["access_token"])), 403, "PERMISSION_DENIED")

    body = {"email": "idle@example.com", "password": FRESH_PASSWORD, "is_active": False}
    response = client.post("/users", json=body, headers=admin.headers)
    assert response.status_code == 201 and response.json()["is_active"] is False
    refused = login_response(client, "idle@example.com", FRESH_PASSWORD)
    assert refused.status_code == 400 and refused.json()["code"] == "INACTIVE_USER"


def test_create_user_refusals_change_nothing(client: TestClient, admin: Account) -> None:
    signup(client, "taken@example.com")
    for email in ["taken@example.com", "TAKEN@Example.com", "  taken@example.COM ", "ADMIN@example.com"]:
        response = client.post("/users", json={"email": email, "password": FRESH_PASSWORD}, headers=admin.headers)
        error(response, 409, "EMAIL_TAKEN")
    for password in ["password", "short", "x" * 129, "weakling-is-me"]:
        body = {"email": "weakling@example.com", "password": password}
        response = client.post("/users", json=body, headers=admin.headers)
        error(response, 422, "WEAK_PASSWORD")
        assert len(password) <= 8 or password not in response.text  # never echoed
    bad_emails: list[str | None] = ["not-an-email", "a@b", "", "a b@example.com", "ada\x00@example.com", None]
    for bad_email in bad_emails:
        response = client.post("/users", json={"email": bad_email, "password": FRESH_PASSWORD}, headers=admin.headers)
        error(response, 422, "VALIDATION_ERROR")
        assert FRESH_PASSWORD not in response.text
    extras: list[dict[str, Any]] = [
        {"full_name": "x" * 256},
        {"full_name": "a\x00b"},
        {"is_active": None},
        {"is_superuser": "maybe"},
    ]
    for extra in extras:
        body = {"email": "fine@example.com", "password": FRESH_PASSWORD, **extra}
        error(client.post("/users", json=body, headers=admin.headers), 422, "VALIDATION_ERROR")
    assert list_users(client, admin)["count"] == 2
    login_response(client, "taken@example.com", PASSWORD).raise_for_status()  # untouched


# --- GET /users/{id} ------------------------------------------------------------------------


def test_read_user_as_admin_and_as_self(client: TestClient, admin: Account, user: Account) -> None:
    body = get_user(client, admin, user.id)
    assert set(body) == PUBLIC_FIELDS and body["email"] == user.email and body["id"] == user.id
    assert "$argon2" not in client.get(f"/users/{user.id}", headers=admin.headers).text

    own = client.get(f"/users/{user.id}", headers=user.headers)  # a normal user may read their own record
    assert own.status_code == 200
    assert own.json() == client.get("/users/me", headers=user.headers).json()
    assert set(own.json()) == PUBLIC_FIELDS and own.json()["id"] == user.id


def test_unknown_ids_are_404_and_malformed_ones_422(client: TestClient, admin: Account) -> None:
    for method in ["GET", "PATCH", "DELETE"]:
        body = {"full_name": "x"} if method == "PATCH" else None
        for unknown in [UNKNOWN_ID, str(uuid.uuid4())]:
            error(client.request(method, f"/users/{unknown}", json=body, headers=admin.headers), 404, "NOT_FOUND")
        for bad in ["not-a-uuid", "1", "00000000-0000-4000-8000-00000000000g"]:
            response = client.request(method, f"/users/{bad}", json=body, headers=admin.headers)
            error(response, 422, "VALIDATION_ERROR")
    assert list_users(client, admin)["count"] == 1


# --- PATCH /users/{id} ----------------------------------------------------------------------


def test_update_name_email_and_verified(client: TestClient, admin: Account, user: Account) -> None:
    response = client.patch(
        f"/users/{user.id}", json={"full_name": "Ada King", "is_verified": True}, headers=admin.headers
    )
    assert response.status_code == 200, response.text
    assert response.json()["full_name"] == "Ada King" and response.json()["is_verified"] is True

    response = client.patch(f"/users/{user.id}", json={"email": " Ada.King@Example.COM "}, headers=admin.headers)
    assert response.status_code == 200
    body = response.json()
    assert set(body) == PUBLIC_FIELDS
    assert body["email"] == "ada.king@example.com" and body["full_name"] == "Ada King"
    assert get_user(client, admin, user.id) == body
    assert login_response(client, user.email, PASSWORD).status_code == 400
    login(client, "ada.king@example.com")

    response = client.patch(f"/users/{user.id}", json={"is_verified": False}, headers=admin.headers)
    assert response.status_code == 200 and response.json()["is_verified"] is False


def test_update_refusals_change_nothing(client: TestClient, admin: Account, user: Account) -> None:
    signup(client, "bob@example.com")
    before = get_user(client, admin, user.id)
    taken = client.patch(
        f"/users/{user.id}", json={"email": "BOB@example.com", "full_name": "X"}, headers=admin.headers
    )
    error(taken, 409, "EMAIL_TAKEN")
    weak = client.patch(f"/users/{user.id}", json={"password": "password", "full_name": "X"}, headers=admin.headers)
    error(weak, 422, "WEAK_PASSWORD")
    for body in [
        {"email": None},
        {"password": None},
        {"is_active": None},
        {"is_superuser": None},
        {"is_verified": None},
        {"email": "nope"},
        {"full_name": "x" * 256},
        {"full_name": "a\x00b"},
        {"is_active": "sometimes"},
    ]:
        response = client.patch(f"/users/{user.id}", json=body, headers=admin.headers)
        assert response.status_code == 422, body
        error(response, 422, "VALIDATION_ERROR")
    assert get_user(client, admin, user.id) == before
    assert client.get("/users/me", headers=user.headers).status_code == 200
    login(client, user.email)


def test_setting_a_password_cuts_the_users_sessions(client: TestClient, admin: Account, user: Account) -> None:
    response = client.patch(f"/users/{user.id}", json={"password": "set by the admin"}, headers=admin.headers)
    assert response.status_code == 200
    assert "set by the admin" not in response.text

    error(client.get("/users/me", headers=user.headers), 401, "INVALID_TOKEN")
    refused = client.post("/auth/refresh", json={"refresh_token": user.refresh_token})
    assert refused.status_code == 401
    assert login_response(client, user.email, PASSWORD).status_code == 400
    tokens = login(client, user.email, "set by the admin")
    assert client.get("/users/me", headers=bearer(tokens["access_token"])).status_code == 200
    assert client.get("/users/me", headers=admin.headers).status_code == 200  # the admin's own session goes on


def test_deactivation_cuts_access_at_once(client: TestClient, admin: Account, user: Account) -> None:
    assert client.get("/users/me", headers=user.headers).status_code == 200
    response = client.patch(f"/users/{user.id}", json={"is_active": False}, headers=admin.headers)
    assert response.status_code == 200 and response.json()["is_active"] is False

    response = client.get("/users/me", headers=user.headers)
    assert response.status_code == 401, response.text
    assert set(response.json()) == {"detail", "code"}
    assert response.json()["code"] in ("INVALID_TOKEN", "INACTIVE_USER")
    assert 'error="invalid_token"' in response.headers["www-authenticate"]
    assert client.post("/auth/refresh", json={"refresh_token": user.refresh_token}).status_code == 401
    refused = login_response(client, user.email, PASSWORD)
    assert refused.status_code == 400 and refused.json()["code"] == "INACTIVE_USER"

    assert client.patch(f"/users/{user.id}", json={"is_active": True}, headers=admin.headers).status_code == 200
    assert client.get("/users/me", headers=user.headers).status_code == 401  # reactivation revives no old session
    tokens = login(client, user.email)
    assert client.get("/users/me", headers=bearer(tokens["access_token"])).status_code == 200


def test_promotion_and_demotion_take_effect_at_once(client: TestClient, admin: Account, user: Account) -> None:
    error(client.get("/users", headers=user.headers), 403, "PERMISSION_DENIED")
    assert client.patch(f"/users/{user.id}", json={"is_superuser": True}, headers=admin.headers).status_code == 200
    assert client.get("/users", headers=user.headers).status_code == 200  # the same token
    assert client.patch(f"/users/{user.id}", json={"is_superuser": False}, headers=admin.headers).status_code == 200
    error(client.get("/users", headers=user.headers), 403, "PERMISSION_DENIED")


def test_admin_cannot_deactivate_demote_or_delete_themselves(client: TestClient, admin: Account) -> None:
    before = get_user(client, admin, admin.id)
    for change in [{"is_active": False}, {"is_superuser": False}, {"is_active": False, "full_name": "Gone"}]:
        response = client.patch(f"/users/{admin.id}", json=change, headers=admin.headers)
        error(response, 409, "CONFLICT")
    assert get_user(client, admin, admin.id) == before
    me = client.get("/users/me", headers=admin.headers).json()
    assert me["is_superuser"] is True and me["is_active"] is True
    error(client.delete(f"/users/{admin.id}", headers=admin.headers), 409, "CONFLICT")  # DELETE /users/me is the way
    assert get_user(client, admin, admin.id) == before
    renamed = client.patch(f"/users/{admin.id}", json={"full_name": "The Admin"}, headers=admin.headers)
    assert renamed.status_code == 200 and renamed.json()["full_name"] == "The Admin"


# --- DELETE /users/{id} ---------------------------------------------------------------------


def test_delete_user(client: TestClient, admin: Account, user: Account) -> None:
    bob = register(client, "bob@example.com")
    response = client.delete(f"/users/{user.id}", headers=admin.headers)
    assert response.status_code == 204 and response.content == b""

    error(client.get(f"/users/{user.id}", headers=admin.headers), 404, "NOT_FOUND")
    error(client.get("/users/me", headers=user.headers), 401, "INVALID_TOKEN")
    assert client.post("/auth/refresh", json={"refresh_token": user.refresh_token}).status_code == 401
    assert login_response(client, user.email, PASSWORD).status_code == 400
    assert sorted(emails(list_users(client, admin))) == ["admin@example.com", "bob@example.com"]
    assert client.get("/users/me", headers=bob.headers).status_code == 200  # others are untouched
    error(client.delete(f"/users/{user.id}", headers=admin.headers), 404, "NOT_FOUND")
    assert signup(client, user.email)["id"] != user.id  # the address is free again
