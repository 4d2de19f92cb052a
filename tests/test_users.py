"""/users/me for everyone, /users for those with the permissions."""

from typing import Any

import pytest
from fastapi.testclient import TestClient
from sqlalchemy import event

from tests.conftest import PASSWORD, Account, login, register, signup


def test_me(client: TestClient, user: Account) -> None:
    response = client.get("/users/me", headers=user.headers)
    assert response.status_code == 200
    body = response.json()
    assert body["email"] == user.email and body["id"] == user.id
    assert "hashed_password" not in response.text and "$argon2" not in response.text


def test_update_me(client: TestClient, user: Account) -> None:
    response = client.patch("/users/me", json={"full_name": "  Ada King  ", "is_superuser": True}, headers=user.headers)
    assert response.status_code == 200
    assert response.json()["full_name"] == "Ada King" and response.json()["is_superuser"] is False
    assert client.patch("/users/me", json={"email": None}, headers=user.headers).status_code == 422
    register(client, "bob@example.com")
    taken = client.patch(
        "/users/me", json={"email": "BOB@example.com", "current_password": PASSWORD}, headers=user.headers
    )
    assert taken.status_code == 409 and taken.json()["code"] == "EMAIL_TAKEN"
    assert client.get("/users/me", headers=user.headers).json()["email"] == user.email


def test_change_password_checks(client: TestClient, user: Account) -> None:
    wrong = {"current_password": "not it at all", "new_password": "a fine new password"}
    response = client.post("/users/me/password", json=wrong, headers=user.headers)
    assert response.status_code == 400 and response.json()["code"] == "INVALID_CREDENTIALS"
    weak = {"current_password": PASSWORD, "new_password": "12345678"}
    assert client.post("/users/me/password", json=weak, headers=user.headers).json()["code"] == "WEAK_PASSWORD"
    good = {"current_password": PASSWORD, "new_password": "a fine new password"}
    assert client.post("/users/me/password", json=good, headers=user.headers).status_code == 204
    assert client.post("/auth/login", data={"username": user.email, "password": PASSWORD}).status_code == 400
    login(client, user.email, "a fine new password")


def test_delete_me(client: TestClient, user: Account) -> None:
    wrong = client.request("DELETE", "/users/me", json={"password": "not my password"}, headers=user.headers)
    assert wrong.status_code == 400 and wrong.json()["code"] == "INVALID_CREDENTIALS"
    assert client.request("DELETE", "/users/me", json={"password": PASSWORD}, headers=user.headers).status_code == 204
    assert client.get("/users/me", headers=user.headers).status_code == 401
    assert client.post("/auth/login", data={"username": user.email, "password": PASSWORD}).status_code == 400
    signup(client, user.email)  # the address is free again


def test_list_paging_and_filters(client: TestClient, admin: Account) -> None:
    for name in ("ann", "bob", "cat", "dan_x", "eve%"):
        signup(client, f"{name.replace('%', 'p')}@example.com", full_name=name.upper())
    page = client.get("/users", params={"offset": 1, "limit": 2}, headers=admin.headers).json()
    assert page["count"] == 6 and len(page["data"]) == 2
    assert [u["email"] for u in client.get("/users", params={"q": "BOB"}, headers=admin.headers).json()["data"]] == [
        "bob@example.com"
    ]
    assert client.get("/users", params={"q": "_"}, headers=admin.headers).json()["count"] == 1  # literal underscore
    assert client.get("/users", params={"q": "%"}, headers=admin.headers).json()["count"] == 1  # literal percent
    bob = client.get("/users", params={"q": "bob"}, headers=admin.headers).json()["data"][0]
    client.patch(f"/users/{bob['id']}", json={"is_active": False}, headers=admin.headers)
    inactive = client.get("/users", params={"is_active": False}, headers=admin.headers).json()
    assert [u["email"] for u in inactive["data"]] == ["bob@example.com"]


@pytest.mark.parametrize(
    "params",
    [{"limit": 201}, {"limit": 0}, {"offset": -1}, {"offset": 10**20}, {"offset": 2**31}, {"is_active": "maybe"}],
)
def test_list_bounds(client: TestClient, admin: Account, params: dict[str, object]) -> None:
    assert client.get("/users", params=params, headers=admin.headers).status_code == 422


def test_permissions_on_users(client: TestClient, user: Account, admin: Account) -> None:
    bob = register(client, "bob@example.com")
    for method, path in [
        ("GET", "/users"),
        ("GET", f"/users/{bob.id}"),
        ("PATCH", f"/users/{bob.id}"),
        ("DELETE", f"/users/{bob.id}"),
    ]:
        response = client.request(method, path, json={} if method == "PATCH" else None, headers=user.headers)
        assert response.status_code == 403 and response.json()["code"] == "PERMISSION_DENIED"
    assert client.get(f"/users/{user.id}", headers=user.headers).status_code == 200  # self


def test_admin_create_read_update_delete(client: TestClient, admin: Account) -> None:
    body = {"email": "New@Example.com", "password": "a long fresh password", "is_verified": True, "full_name": "New"}
    created = client.post("/users", json=body, headers=admin.headers)
    assert created.status_code == 201 and created.json()["is_verified"] is True
    user_id = created.json()["id"]
    assert client.post("/users", json=body, headers=admin.headers).json()["code"] == "EMAIL_TAKEN"
    weak = {**body, "email": "weak@example.com", "password": "password"}
    assert client.post("/users", json=weak, headers=admin.headers).json()["code"] == "WEAK_PASSWORD"
    assert client.get(f"/users/{user_id}", headers=admin.headers).json()["email"] == "new@example.com"
    assert client.get("/users/00000000-0000-4000-8000-000000000000", headers=admin.headers).status_code == 404
    assert client.get("/users/not-a-uuid", headers=admin.headers).status_code == 422

    patched = client.patch(
        f"/users/{user_id}", json={"password": "set by the admin", "full_name": "Renamed"}, headers=admin.headers
    )
    assert patched.status_code == 200 and patched.json()["full_name"] == "Renamed"
    login(client, "new@example.com", "set by the admin")
    assert client.delete(f"/users/{user_id}", headers=admin.headers).status_code == 204
    assert client.get(f"/users/{user_id}", headers=admin.headers).status_code == 404
    assert client.delete(f"/users/{user_id}", headers=admin.headers).status_code == 404


def test_admins_cannot_lock_themselves_out(client: TestClient, admin: Account) -> None:
    for change in ({"is_active": False}, {"is_superuser": False}):
        response = client.patch(f"/users/{admin.id}", json=change, headers=admin.headers)
        assert response.status_code == 409 and response.json()["code"] == "CONFLICT"
    assert client.delete(f"/users/{admin.id}", headers=admin.headers).json()["code"] == "CONFLICT"
    assert client.get("/users/me", headers=admin.headers).json()["is_superuser"] is True


def test_an_authenticated_request_is_one_database_round_trip(client: TestClient, user: Account, app: Any) -> None:
    """Counted at the driver, below SQLAlchemy: on PostgreSQL the query is a prepared
    statement run on the raw cursor, which SQLAlchemy's events do not see."""
    statements: list[str] = []
    engine = app.state.engine

    def count(statement: Any) -> None:
        text = statement.decode() if isinstance(statement, bytes) else str(statement)
        if not text.lstrip().upper().startswith(("PRAGMA", "BEGIN", "COMMIT", "ROLLBACK")):
            statements.append(text)

    if engine.dialect.name == "postgresql":
        import psycopg2.extensions

        class Counting(psycopg2.extensions.cursor):  # type: ignore[misc]
            def execute(self, query: Any, vars: Any = None) -> Any:
                count(query)
                return super().execute(query, vars)

        def counting_cursors(dbapi_connection: Any, *_: Any) -> None:
            dbapi_connection.cursor_factory = Counting

        event.listen(engine, "checkout", counting_cursors)  # the pool's connections
        app.state.reads.close()  # and the event loop's, made anew with counting cursors
        app.state.reads._connect_args[1]["cursor_factory"] = Counting
    for _ in range(3):  # warm: the public key cached, the statement prepared on the connections used
        assert client.get("/users/me", headers=user.headers).status_code == 200
    statements.clear()
    if engine.dialect.name == "sqlite":
        event.listen(engine, "before_cursor_execute", lambda conn, cursor, statement, *args: count(statement))
    assert client.get("/users/me", headers=user.headers).status_code == 200
    assert len(statements) == 1, statements  # user, session liveness, roles and the key in one query
