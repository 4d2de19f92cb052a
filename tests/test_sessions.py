"""Sessions: refresh rotation and reuse detection, logout at once, the session list,
revocation on password change and deactivation, introspection, pruning."""

from datetime import timedelta

from fastapi.testclient import TestClient
from sqlalchemy import update
from sqlmodel import Session, col, select

from auth_service.models import RefreshToken, UserSession, utcnow
from auth_service.sessions import prune_sessions
from tests.conftest import PASSWORD, Account, login, register, service


def bearer(token: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}"}


def test_refresh_rotates(client: TestClient, user: Account) -> None:
    response = client.post("/auth/refresh", json={"refresh_token": user.refresh_token})
    assert response.status_code == 200
    assert response.headers["cache-control"] == "no-store"
    tokens = response.json()
    assert tokens["refresh_token"] != user.refresh_token
    assert client.get("/users/me", headers=bearer(tokens["access_token"])).status_code == 200
    again = client.post("/auth/refresh", json={"refresh_token": tokens["refresh_token"]})
    assert again.status_code == 200


def test_reused_refresh_token_ends_the_session(client: TestClient, user: Account) -> None:
    fresh = client.post("/auth/refresh", json={"refresh_token": user.refresh_token}).json()
    replay = client.post("/auth/refresh", json={"refresh_token": user.refresh_token})
    assert replay.status_code == 401
    assert replay.json()["code"] == "INVALID_TOKEN" and replay.json()["error"] == "invalid_grant"
    assert 'error="invalid_token"' in replay.headers["www-authenticate"]
    # the whole session is gone: the newest refresh token and every access token of it
    assert client.post("/auth/refresh", json={"refresh_token": fresh["refresh_token"]}).status_code == 401
    assert client.get("/users/me", headers=bearer(fresh["access_token"])).status_code == 401
    assert client.get("/users/me", headers=user.headers).status_code == 401
    login(client, user.email)  # a new login works


def test_refresh_grant_at_the_token_endpoint(client: TestClient, user: Account) -> None:
    data = {"grant_type": "refresh_token", "refresh_token": user.refresh_token}
    response = client.post("/auth/login", data=data)
    assert response.status_code == 200 and response.json()["refresh_token"] != user.refresh_token
    bad = client.post("/auth/login", data=data)  # RFC 6749: 400 invalid_grant, not 401
    assert bad.status_code == 400 and bad.json()["error"] == "invalid_grant"
    assert "www-authenticate" not in bad.headers


def test_unknown_refresh_token(client: TestClient) -> None:
    for token in ["nope", "x" * 512, "\x00"]:
        response = client.post("/auth/refresh", json={"refresh_token": token})
        assert response.status_code == 401 and response.json()["code"] == "INVALID_TOKEN"
    assert client.post("/auth/refresh", json={"refresh_token": ""}).status_code == 422


def test_refresh_token_is_not_a_bearer_token(client: TestClient, user: Account) -> None:
    response = client.get("/users/me", headers=bearer(user.refresh_token))
    assert response.status_code == 401 and response.json()["code"] == "INVALID_TOKEN"


def test_logout_takes_effect_on_the_next_request(client: TestClient, user: Account) -> None:
    other = login(client, user.email)
    assert client.post("/auth/logout", headers=user.headers).status_code == 204
    assert client.get("/users/me", headers=user.headers).status_code == 401
    assert client.post("/auth/refresh", json={"refresh_token": user.refresh_token}).status_code == 401
    assert client.get("/users/me", headers=bearer(other["access_token"])).status_code == 200


def test_logout_all(client: TestClient, user: Account) -> None:
    other = login(client, user.email)
    assert client.post("/auth/logout-all", headers=user.headers).status_code == 204
    for token in (user.access_token, other["access_token"]):
        assert client.get("/users/me", headers=bearer(token)).status_code == 401
    assert client.post("/auth/refresh", json={"refresh_token": other["refresh_token"]}).status_code == 401


def test_session_list(client: TestClient, user: Account) -> None:
    second = login(client, user.email)
    third = login(client, user.email)
    client.post("/auth/logout", headers=bearer(third["access_token"]))
    response = client.get("/auth/sessions", headers=user.headers)
    assert response.status_code == 200
    body = response.json()
    assert body["count"] == 2 and len(body["data"]) == 2
    assert [s["current"] for s in body["data"]].count(True) == 1
    assert set(body["data"][0]) == {
        "id",
        "created_at",
        "last_used_at",
        "expires_at",
        "user_agent",
        "client_ip",
        "current",
    }
    text = response.text
    for secret in (user.access_token, user.refresh_token, second["access_token"], second["refresh_token"]):
        assert secret not in text


def test_delete_own_other_session(client: TestClient, user: Account) -> None:
    other = login(client, user.email)
    sessions = client.get("/auth/sessions", headers=user.headers).json()["data"]
    [other_id] = [s["id"] for s in sessions if not s["current"]]
    assert client.delete(f"/auth/sessions/{other_id}", headers=user.headers).status_code == 204
    assert client.get("/users/me", headers=bearer(other["access_token"])).status_code == 401
    assert client.get("/users/me", headers=user.headers).status_code == 200
    assert client.delete(f"/auth/sessions/{other_id}", headers=user.headers).status_code == 404


def test_someone_elses_session_is_404(client: TestClient, user: Account) -> None:
    bob = register(client, "bob@example.com")
    bobs = client.get("/auth/sessions", headers=bob.headers).json()["data"][0]["id"]
    response = client.delete(f"/auth/sessions/{bobs}", headers=user.headers)
    assert response.status_code == 404 and response.json()["code"] == "NOT_FOUND"
    assert client.get("/users/me", headers=bob.headers).status_code == 200
    assert client.delete("/auth/sessions/00000000-0000-4000-8000-000000000000", headers=user.headers).status_code == 404


def test_expired_session(client: TestClient, user: Account, db: Session) -> None:
    db.exec(update(UserSession).values(expires_at=utcnow() - timedelta(seconds=1)))
    db.commit()
    assert client.get("/users/me", headers=user.headers).status_code == 401
    response = client.post("/auth/refresh", json={"refresh_token": user.refresh_token})
    assert response.status_code == 401 and response.json()["code"] == "TOKEN_EXPIRED"


def test_password_change_ends_other_sessions(client: TestClient, user: Account) -> None:
    other = login(client, user.email)
    body = {"current_password": PASSWORD, "new_password": "another long password"}
    assert client.post("/users/me/password", json=body, headers=user.headers).status_code == 204
    assert client.get("/users/me", headers=user.headers).status_code == 200
    assert client.get("/users/me", headers=bearer(other["access_token"])).status_code == 401
    assert client.post("/auth/refresh", json={"refresh_token": other["refresh_token"]}).status_code == 401


def test_deactivation_ends_every_session(client: TestClient, user: Account, admin: Account) -> None:
    assert client.patch(f"/users/{user.id}", json={"is_active": False}, headers=admin.headers).status_code == 200
    assert client.get("/users/me", headers=user.headers).status_code == 401
    assert client.post("/auth/refresh", json={"refresh_token": user.refresh_token}).status_code == 401
    assert client.post("/auth/introspect", json={"token": user.access_token}, auth=service(client, admin)).json() == {
        "active": False
    }


def test_introspection(client: TestClient, user: Account, admin: Account) -> None:
    credentials = service(client, admin)
    body = client.post("/auth/introspect", json={"token": user.access_token}, auth=credentials).json()
    assert body["active"] is True
    assert body["sub"] == user.id and body["email"] == user.email and body["username"] == user.email
    assert body["email_verified"] is False and "client_id" not in body
    assert {"exp", "iat", "sid", "scope", "roles", "permissions"} <= set(body)
    for token in ["garbage", "", user.refresh_token]:
        assert client.post("/auth/introspect", json={"token": token}, auth=credentials).json() == {"active": False}
    client.post("/auth/logout", headers=user.headers)
    assert client.post("/auth/introspect", json={"token": user.access_token}, auth=credentials).json() == {
        "active": False
    }


def test_prune_keeps_live_sessions(client: TestClient, user: Account, db: Session) -> None:
    old = login(client, user.email)
    client.post("/auth/logout", headers=bearer(old["access_token"]))
    long_ago = utcnow() - timedelta(days=60)
    db.exec(update(UserSession).where(col(UserSession.revoked_at).is_not(None)).values(revoked_at=long_ago))
    db.commit()
    assert prune_sessions(db, 30) == 1
    assert len(db.exec(select(UserSession)).all()) == 1
    assert len(db.exec(select(RefreshToken)).all()) == 1  # the pruned session's tokens went with it
    assert client.get("/users/me", headers=user.headers).status_code == 200
