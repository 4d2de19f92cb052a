"""Roles and permissions: CRUD, assignment, enforcement, token claims, no escalation."""

import subprocess
import sys
from typing import Annotated, Any

import pytest
from fastapi import Depends, FastAPI
from fastapi.testclient import TestClient
from jose import jwt
from sqlmodel import Session

from auth_service.accounts import create_superuser
from auth_service.config import Settings
from auth_service.deps import require_role
from auth_service.permissions import BUILTIN_PERMISSIONS
from auth_service.principals import Principal
from tests.conftest import ROOT, Account, login, register, service, service_env


def create_role(client: TestClient, admin: Account, name: str, permissions: list[str], **extra: Any) -> dict[str, Any]:
    response = client.post("/roles", json={"name": name, "permissions": permissions, **extra}, headers=admin.headers)
    assert response.status_code == 201, response.text
    body: dict[str, Any] = response.json()
    return body


def grant(client: TestClient, admin: Account, user: Account, role: str) -> dict[str, Any]:
    response = client.post(f"/users/{user.id}/roles/{role}", headers=admin.headers)
    assert response.status_code == 200, response.text
    body: dict[str, Any] = response.json()
    return body


def relogin(client: TestClient, account: Account) -> Account:
    tokens = login(client, account.email, account.password)
    return Account(account.email, account.password, account.id, tokens["access_token"], tokens["refresh_token"])


def test_admin_role_is_seeded_with_every_builtin_permission(client: TestClient, admin: Account) -> None:
    response = client.get("/roles/admin", headers=admin.headers)
    assert response.status_code == 200
    assert sorted(response.json()["permissions"]) == sorted(BUILTIN_PERMISSIONS)


def test_role_crud(client: TestClient, admin: Account) -> None:
    role = create_role(client, admin, "support", ["users:read", "tickets:close", "users:read"], description="Help desk")
    assert role["permissions"] == ["tickets:close", "users:read"]  # deduplicated, sorted
    assert role["description"] == "Help desk"
    listing = client.get("/roles", headers=admin.headers).json()
    assert listing["count"] == 2 and [r["name"] for r in listing["data"]] == ["admin", "support"]

    patched = client.patch("/roles/support", json={"permissions": ["users:read"]}, headers=admin.headers)
    assert patched.status_code == 200 and patched.json()["permissions"] == ["users:read"]
    renamed = client.patch("/roles/support", json={"name": "helpdesk"}, headers=admin.headers)
    assert renamed.status_code == 200 and renamed.json()["name"] == "helpdesk"
    assert client.get("/roles/support", headers=admin.headers).json()["code"] == "NOT_FOUND"

    assert client.delete("/roles/helpdesk", headers=admin.headers).status_code == 204
    assert client.get("/roles/helpdesk", headers=admin.headers).status_code == 404


def test_duplicate_role_name_is_409(client: TestClient, admin: Account) -> None:
    create_role(client, admin, "support", [])
    response = client.post("/roles", json={"name": "support"}, headers=admin.headers)
    assert response.status_code == 409 and response.json()["code"] == "CONFLICT"
    create_role(client, admin, "other", [])
    clash = client.patch("/roles/other", json={"name": "support"}, headers=admin.headers)
    assert clash.status_code == 409


@pytest.mark.parametrize(
    "body",
    [
        {"name": "Support"},
        {"name": "has space"},
        {"name": ""},
        {"name": "x" * 65},
        {"name": "ok", "permissions": ["users"]},
        {"name": "ok", "permissions": ["Users:Read"]},
        {"name": "ok", "permissions": ["users:read:extra"]},
        {"name": "ok", "permissions": "users:read"},
        {"name": "ok", "permissions": [f"p{i}:read" for i in range(101)]},
    ],
)
def test_invalid_role_names_and_permissions_are_422(client: TestClient, admin: Account, body: dict[str, Any]) -> None:
    response = client.post("/roles", json=body, headers=admin.headers)
    assert response.status_code == 422 and response.json()["code"] == "VALIDATION_ERROR"
    assert client.get("/roles", headers=admin.headers).json()["count"] == 1


def test_unknown_role_or_user_is_404(client: TestClient, admin: Account, user: Account) -> None:
    assert client.post(f"/users/{user.id}/roles/nope", headers=admin.headers).status_code == 404
    missing_user = "00000000-0000-4000-8000-000000000000"
    assert client.post(f"/users/{missing_user}/roles/admin", headers=admin.headers).status_code == 404


def test_assign_and_remove_are_idempotent(client: TestClient, admin: Account, user: Account) -> None:
    create_role(client, admin, "support", ["users:read"])
    assert grant(client, admin, user, "support")["roles"] == ["support"]
    assert grant(client, admin, user, "support")["roles"] == ["support"]
    me = client.get("/users/me", headers=user.headers).json()
    assert me["roles"] == ["support"]
    for _ in range(2):
        removed = client.delete(f"/users/{user.id}/roles/support", headers=admin.headers)
        assert removed.status_code == 200 and removed.json()["roles"] == []


def test_permission_grants_access_without_superuser(client: TestClient, admin: Account, user: Account) -> None:
    assert client.get("/users", headers=user.headers).json()["code"] == "PERMISSION_DENIED"
    create_role(client, admin, "support", ["users:read"])
    grant(client, admin, user, "support")
    # Role changes apply at once: the database is read on every request, not the token.
    assert client.get("/users", headers=user.headers).status_code == 200
    assert client.post("/users", json={}, headers=user.headers).status_code == 403
    client.delete(f"/users/{user.id}/roles/support", headers=admin.headers)
    assert client.get("/users", headers=user.headers).status_code == 403


def test_deleting_a_role_removes_it_from_holders(client: TestClient, admin: Account, user: Account) -> None:
    create_role(client, admin, "support", ["users:read"])
    grant(client, admin, user, "support")
    assert client.delete("/roles/support", headers=admin.headers).status_code == 204
    assert client.get("/users/me", headers=user.headers).json()["roles"] == []
    assert client.get("/users", headers=user.headers).status_code == 403
    assert client.get(f"/users/{user.id}", headers=admin.headers).json()["roles"] == []


def test_admin_role_holder_manages_users(client: TestClient, admin: Account, user: Account) -> None:
    grant(client, admin, user, "admin")
    other = register(client, "bob@example.com")
    assert client.patch(f"/users/{other.id}", json={"full_name": "Bob"}, headers=user.headers).status_code == 200
    assert client.delete(f"/users/{other.id}", headers=user.headers).status_code == 204


def test_non_superuser_cannot_touch_superusers(client: TestClient, admin: Account, user: Account) -> None:
    grant(client, admin, user, "admin")
    escalate = client.patch(f"/users/{user.id}", json={"is_superuser": True}, headers=user.headers)
    assert escalate.status_code == 403
    assert client.patch(f"/users/{admin.id}", json={"full_name": "x"}, headers=user.headers).status_code == 403
    assert client.delete(f"/users/{admin.id}", headers=user.headers).status_code == 403
    body = {"email": "root2@example.com", "password": "another long password", "is_superuser": True}
    assert client.post("/users", json=body, headers=user.headers).status_code == 403


def test_cannot_grant_permissions_you_do_not_hold(client: TestClient, admin: Account, user: Account) -> None:
    create_role(client, admin, "role-manager", ["roles:write", "roles:assign", "roles:read"])
    create_role(client, admin, "auditor", ["audit:read"])
    grant(client, admin, user, "role-manager")
    refused = client.post("/roles", json={"name": "mine", "permissions": ["users:delete"]}, headers=user.headers)
    assert refused.status_code == 403 and "users:delete" in refused.json()["detail"]
    grow = client.patch(
        "/roles/role-manager", json={"permissions": ["roles:write", "users:write"]}, headers=user.headers
    )
    assert grow.status_code == 403
    assert client.post(f"/users/{user.id}/roles/auditor", headers=user.headers).status_code == 403
    allowed = client.post("/roles", json={"name": "reader", "permissions": ["roles:read"]}, headers=user.headers)
    assert allowed.status_code == 201


def test_roles_endpoints_need_their_permissions(client: TestClient, admin: Account, user: Account) -> None:
    assert client.get("/roles", headers=user.headers).status_code == 403
    assert client.post("/roles", json={"name": "x"}, headers=user.headers).status_code == 403
    assert client.delete("/roles/admin", headers=user.headers).status_code == 403
    assert client.post(f"/users/{user.id}/roles/admin", headers=user.headers).status_code == 403
    assert client.get("/roles").status_code == 401


def test_access_token_carries_roles_and_permissions(client: TestClient, admin: Account, user: Account) -> None:
    create_role(client, admin, "support", ["users:read", "tickets:close"])
    grant(client, admin, user, "support")
    fresh = relogin(client, user)
    claims = jwt.get_unverified_claims(fresh.access_token)
    assert claims["roles"] == ["support"]
    assert claims["permissions"] == ["tickets:close", "users:read"]
    admin_claims = jwt.get_unverified_claims(admin.access_token)
    assert sorted(admin_claims["permissions"]) == sorted(BUILTIN_PERMISSIONS)
    introspected = client.post(
        "/auth/introspect", json={"token": fresh.access_token}, auth=service(client, admin)
    ).json()
    assert introspected["roles"] == ["support"]
    assert introspected["permissions"] == ["tickets:close", "users:read"]


def test_grant_role_command(client: TestClient, user: Account, database_url: str, admin: Account) -> None:
    env = service_env(database_url)
    command = [sys.executable, "-m", "auth_service", "grant-role", "--email", user.email.upper(), "--role", "admin"]
    refused = subprocess.run(command, cwd=ROOT, env=env, capture_output=True, text=True, timeout=60)
    assert refused.returncode != 0 and "not verified" in refused.stderr  # a squatter's address, maybe
    assert client.get("/users", headers=user.headers).status_code == 403
    forced = subprocess.run([*command, "--force"], cwd=ROOT, env=env, capture_output=True, text=True, timeout=60)
    assert forced.returncode == 0, forced.stderr
    assert client.get("/users", headers=user.headers).status_code == 200
    events = client.get("/audit-events", params={"type": "role.assigned"}, headers=admin.headers).json()["data"]
    assert [(e["subject_id"], e["details"]) for e in events] == [(user.id, {"role": "admin", "by": "cli"})]
    missing = subprocess.run([*command[:-1], "nope"], cwd=ROOT, env=env, capture_output=True, text=True, timeout=60)
    assert missing.returncode != 0 and "no role" in missing.stderr


def test_require_role_dependency(app: FastAPI, settings: Settings) -> None:
    """For routes that check a role by name rather than a permission."""

    @app.get("/support-desk")
    def support_desk(principal: Annotated[Principal, Depends(require_role("support"))]) -> dict[str, str]:
        assert principal.account is not None
        return {"hello": principal.account.email}

    with TestClient(app) as client:
        ada = register(client, "ada@example.com")
        assert client.get("/support-desk", headers=ada.headers).json()["code"] == "PERMISSION_DENIED"
        assert client.get("/support-desk").status_code == 401
        with Session(app.state.engine) as session:
            create_superuser(session, settings, "root@example.com", "root password for tests")
        root = login(client, "root@example.com", "root password for tests")
        root_headers = {"Authorization": f"Bearer {root['access_token']}"}
        assert client.get("/support-desk", headers=root_headers).status_code == 200  # superusers pass
        client.post("/roles", json={"name": "support"}, headers=root_headers)
        client.post(f"/users/{ada.id}/roles/support", headers=root_headers)
        assert client.get("/support-desk", headers=ada.headers).json() == {"hello": "ada@example.com"}
