"""Tokens other services can trust without our secret (issue 11): ES256 with a `kid`, keys
in the database published as a JWKS, rotation, service clients with client credentials,
authenticated introspection, revocation, and the refresh grace interval."""

import base64
import json
import subprocess
import sys
import threading
import time
import uuid
from datetime import timedelta

import httpx
import jwt as pyjwt
import pytest
from fastapi import FastAPI
from fastapi.testclient import TestClient
from jose import jwt
from oauthlib.oauth2 import BackendApplicationClient
from requests_oauthlib import OAuth2Session
from sqlalchemy import update
from sqlmodel import Session, col, select

from auth_service import signing_keys
from auth_service.config import Settings
from auth_service.main import create_app
from auth_service.mfa import MFA_GRANT
from auth_service.models import AuditEvent, Client, RefreshToken, SigningKey, UserSession, utcnow
from tests.conftest import (
    PASSWORD,
    ROOT,
    Account,
    LiveServer,
    login,
    make_settings,
    register,
    service,
    service_env,
    sign_as_the_service,
)
from tests.examples import downstream
from tests.support import Workers


def bearer(token: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}"}


def client_token(client: TestClient, credentials: tuple[str, str], **form: str) -> httpx.Response:
    response: httpx.Response = client.post(
        "/auth/login", data={"grant_type": "client_credentials", **form}, auth=credentials
    )
    return response


# --- keys and the JWKS ---------------------------------------------------------------------


def test_a_stock_jwt_library_verifies_our_tokens_from_the_jwks(live_server: LiveServer) -> None:
    url = live_server.url
    httpx.post(f"{url}/auth/signup", json={"email": "ada@example.com", "password": PASSWORD}).raise_for_status()
    token = httpx.post(f"{url}/auth/login", data={"username": "ada@example.com", "password": PASSWORD}).json()
    jwks = httpx.get(f"{url}/.well-known/jwks.json")
    assert jwks.status_code == 200 and "max-age=" in jwks.headers["cache-control"]
    assert "no-store" not in jwks.headers["cache-control"]
    [key] = jwks.json()["keys"]
    assert key["kty"] == "EC" and key["alg"] == "ES256" and key["use"] == "sig" and "d" not in key  # no private part
    assert key["kid"] == jwt.get_unverified_header(token["access_token"])["kid"]
    signing_key = pyjwt.PyJWKClient(f"{url}/.well-known/jwks.json").get_signing_key_from_jwt(token["access_token"])
    claims = pyjwt.decode(token["access_token"], signing_key, algorithms=["ES256"], audience="auth_service",
                          issuer="auth_service")  # fmt: skip
    assert claims["sub"] and claims["sid"] and claims["type"] == "access"


def test_metadata_describes_the_service(client: TestClient, settings: Settings) -> None:
    answer = client.get("/.well-known/oauth-authorization-server")
    assert answer.status_code == 200
    body = answer.json()
    base = settings.public_url
    assert body["issuer"] == settings.jwt_issuer
    assert body["token_endpoint"] == f"{base}/auth/login"
    assert body["introspection_endpoint"] == f"{base}/auth/introspect"
    assert body["revocation_endpoint"] == f"{base}/auth/revoke"
    assert body["jwks_uri"] == f"{base}/.well-known/jwks.json"
    assert set(body["grant_types_supported"]) == {"password", "refresh_token", "client_credentials", MFA_GRANT}
    assert "client_secret_basic" in body["token_endpoint_auth_methods_supported"]
    assert "none" not in body["introspection_endpoint_auth_methods_supported"]


def test_private_keys_are_sealed_at_rest(client: TestClient, user: Account, db: Session) -> None:
    [key] = db.exec(select(SigningKey)).all()
    assert "PRIVATE KEY" not in key.private_key and key.private_key.startswith("gAAAAA")  # a Fernet token
    assert "d" not in key.public_jwk


def test_rotation_keeps_old_tokens_until_they_expire(
    client: TestClient, user: Account, app: FastAPI, db: Session
) -> None:
    old_kid = jwt.get_unverified_header(user.access_token)["kid"]
    new_kid, previous = signing_keys.rotate(app.state.engine, app.state.settings)
    assert previous is not None and previous.kid == old_kid and new_kid != old_kid
    assert client.get("/users/me", headers=user.headers).status_code == 200  # still valid
    fresh = login(client, user.email)
    assert jwt.get_unverified_header(fresh["access_token"])["kid"] == new_kid
    assert {k["kid"] for k in client.get("/.well-known/jwks.json").json()["keys"]} == {old_kid, new_kid}
    # once every token it signed has expired, the old key is refused, unpublished, and pruned
    db.exec(update(SigningKey).where(col(SigningKey.kid) == old_kid).values(expires_at=utcnow() - timedelta(seconds=1)))
    db.commit()
    refused = client.get("/users/me", headers=user.headers)
    assert refused.status_code == 401 and refused.json()["code"] == "INVALID_TOKEN"
    assert [k["kid"] for k in client.get("/.well-known/jwks.json").json()["keys"]] == [new_kid]
    assert client.get("/users/me", headers=bearer(fresh["access_token"])).status_code == 200
    assert signing_keys.prune(app.state.engine) == 1
    assert {k.kid for k in db.exec(select(SigningKey)).all()} == {new_kid}
    events = db.exec(select(AuditEvent).where(col(AuditEvent.type) == "signing_key.rotated")).all()
    assert [e.details["kid"] for e in events] == [new_kid]
    assert "private" not in json.dumps([e.details for e in events]).lower()


def test_rotate_now_refuses_the_old_key_at_once_but_sessions_go_on(
    client: TestClient, user: Account, database_url: str
) -> None:
    result = subprocess.run([sys.executable, "-m", "auth_service", "rotate-signing-key", "--now"], cwd=ROOT,
                            env=service_env(database_url), capture_output=True, text=True, timeout=60)  # fmt: skip
    assert result.returncode == 0, result.stderr
    assert result.stdout.startswith("signing with ")
    assert client.get("/users/me", headers=user.headers).status_code == 401
    refreshed = client.post("/auth/refresh", json={"refresh_token": user.refresh_token})  # the session lives on
    assert refreshed.status_code == 200
    assert client.get("/users/me", headers=bearer(refreshed.json()["access_token"])).status_code == 200


def test_a_new_secret_key_makes_a_new_signing_key(database_url: str, client: TestClient, user: Account) -> None:
    """The old private key cannot be unsealed any more: start-up rotates; the tokens it
    signed still verify (with its public key) until they expire."""
    other = make_settings(database_url, secret_key="another-test-secret-key-that-is-long-enough-987")
    app = create_app(other)
    with TestClient(app) as restarted:
        assert restarted.get("/users/me", headers=user.headers).status_code == 200
        fresh = login(restarted, user.email)
        assert (
            jwt.get_unverified_header(fresh["access_token"])["kid"]
            != jwt.get_unverified_header(user.access_token)["kid"]
        )
    app.state.engine.dispose()


def test_hs256_stays_selectable(database_url: str, client: TestClient) -> None:
    app = create_app(make_settings(database_url, jwt_algorithm="HS256"))
    with TestClient(app) as hs:
        ada = register(hs, "ada@example.com")
        assert jwt.get_unverified_header(ada.access_token)["alg"] == "HS256"
        assert hs.get("/users/me", headers=ada.headers).status_code == 200
        assert hs.get("/.well-known/jwks.json").json() == {"keys": []}  # a shared secret is never published
    app.state.engine.dispose()


def test_two_workers_share_the_key_and_a_restart_keeps_it(workers: Workers) -> None:
    urls = workers.start()
    httpx.post(f"{urls[0]}/auth/signup", json={"email": "ada@example.com", "password": PASSWORD}).raise_for_status()
    token = httpx.post(f"{urls[0]}/auth/login", data={"username": "ada@example.com", "password": PASSWORD}).json()
    keys = [httpx.get(f"{url}/.well-known/jwks.json").json()["keys"] for url in urls]
    assert keys[0] == keys[1] and len(keys[0]) == 1
    assert httpx.get(f"{urls[1]}/users/me", headers=bearer(token["access_token"])).status_code == 200
    workers.stop()
    urls = workers.start()
    assert [httpx.get(f"{url}/.well-known/jwks.json").json()["keys"] for url in urls] == keys
    for url in urls:
        assert httpx.get(f"{url}/users/me", headers=bearer(token["access_token"])).status_code == 200


# --- service clients ------------------------------------------------------------------------


def test_client_credentials_give_a_token_our_endpoints_honour(
    client: TestClient, admin: Account, user: Account
) -> None:
    credentials = service(client, admin, ["users:read"])
    in_form = {"grant_type": "client_credentials", "client_id": credentials[0], "client_secret": credentials[1]}
    for answer in (client_token(client, credentials), client.post("/auth/login", data=in_form)):
        assert answer.status_code == 200, answer.text
        body = answer.json()
        assert body["token_type"] == "bearer" and "refresh_token" not in body and body["scope"] == "users:read"
        assert answer.headers["cache-control"] == "no-store"
    claims = jwt.get_unverified_claims(body["access_token"])
    assert claims["sub"] == credentials[0] and claims["client_id"] == credentials[0]
    assert claims["permissions"] == ["users:read"] and claims["roles"] == []
    headers = bearer(body["access_token"])
    listing = client.get("/users", headers=headers)
    assert listing.status_code == 200 and user.email in [u["email"] for u in listing.json()["data"]]
    assert client.get(f"/users/{user.id}", headers=headers).status_code == 200
    assert client.patch(f"/users/{user.id}", json={"full_name": "x"}, headers=headers).status_code == 403
    assert client.get("/users/me", headers=headers).status_code == 403  # a client has no account
    assert client.get("/audit-events", headers=headers).status_code == 403


def test_requests_oauthlib_backend_application_client(
    live_server: LiveServer, admin: Account, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("OAUTHLIB_INSECURE_TRANSPORT", "1")  # plain HTTP on loopback, for the test
    with TestClient(live_server.app) as local:
        client_id, secret = service(local, admin, ["users:read"])
    oauth = OAuth2Session(client=BackendApplicationClient(client_id=client_id))
    token = oauth.fetch_token(f"{live_server.url}/auth/login", client_id=client_id, client_secret=secret)
    assert token["token_type"].lower() == "bearer" and token["expires_in"] > 0
    assert oauth.get(f"{live_server.url}/users").status_code == 200


def test_bad_client_credentials_are_refused(client: TestClient, admin: Account) -> None:
    client_id, secret = service(client, admin, ["users:read"])
    for credentials in ((client_id, "wrong"), ("svc_unknown", secret), ("", "")):
        answer = client_token(client, credentials)
        assert answer.status_code == 401 and answer.json()["error"] == "invalid_client", credentials
        assert answer.headers["www-authenticate"].startswith("Basic")
    in_form = client.post("/auth/login", data={"grant_type": "client_credentials", "client_id": client_id,
                                                "client_secret": "wrong"})  # fmt: skip
    assert in_form.status_code == 400 and in_form.json()["error"] == "invalid_client"
    none = client.post("/auth/login", data={"grant_type": "client_credentials"})
    assert none.status_code == 401 and none.json()["error"] == "invalid_client"
    wider = client_token(client, (client_id, secret), scope="users:read users:write")
    assert wider.status_code == 400 and wider.json()["error"] == "invalid_scope"
    narrow = client_token(client, (client_id, secret), scope="users:read")
    assert narrow.status_code == 200


def test_deactivating_rotating_or_deleting_a_client_cuts_its_tokens_at_once(client: TestClient, admin: Account) -> None:
    def fresh_token(credentials: tuple[str, str]) -> dict[str, str]:
        answer = client_token(client, credentials)
        assert answer.status_code == 200
        return bearer(answer.json()["access_token"])

    client_id, secret = service(client, admin, ["users:read"])
    headers = fresh_token((client_id, secret))
    assert client.patch(f"/clients/{client_id}", json={"is_active": False}, headers=admin.headers).status_code == 200
    assert client.get("/users", headers=headers).status_code == 401
    assert client_token(client, (client_id, secret)).status_code == 401
    assert client.patch(f"/clients/{client_id}", json={"is_active": True}, headers=admin.headers).status_code == 200
    assert client.get("/users", headers=headers).status_code == 401  # reactivation revives no old token

    headers = fresh_token((client_id, secret))
    rotated = client.post(f"/clients/{client_id}/secret", headers=admin.headers)
    assert rotated.status_code == 200 and rotated.json()["client_secret"] != secret
    assert client.get("/users", headers=headers).status_code == 401  # the old secret's tokens
    assert client_token(client, (client_id, secret)).status_code == 401  # the old secret
    headers = fresh_token((client_id, rotated.json()["client_secret"]))

    assert client.delete(f"/clients/{client_id}", headers=admin.headers).status_code == 204
    assert client.get("/users", headers=headers).status_code == 401


def test_the_secret_is_shown_once_and_kept_only_hashed(client: TestClient, admin: Account, db: Session) -> None:
    client_id, secret = service(client, admin, ["users:read"])
    shown = client.get(f"/clients/{client_id}", headers=admin.headers).json()
    assert "client_secret" not in shown and secret not in json.dumps(shown)
    assert secret not in client.get("/clients", headers=admin.headers).text
    [row] = db.exec(select(Client)).all()
    assert secret not in row.secret_hash and len(row.secret_hash) == 64
    audit = client.get("/audit-events", headers=admin.headers).text
    assert secret not in audit and "client.created" in audit


def test_clients_write_is_not_a_way_up(client: TestClient, admin: Account) -> None:
    eve = register(client, "eve@example.com")
    client.post("/roles", json={"name": "integrator", "permissions": ["clients:read", "clients:write", "users:read"]},
                headers=admin.headers)  # fmt: skip
    client.post(f"/users/{eve.id}/roles/integrator", headers=admin.headers)
    tokens = login(client, eve.email)  # now with her role's permissions
    eve = Account(eve.email, eve.password, eve.id, tokens["access_token"], tokens["refresh_token"])
    above = client.post("/clients", json={"name": "x", "permissions": ["users:write"]}, headers=eve.headers)
    assert above.status_code == 403 and above.json()["code"] == "PERMISSION_DENIED"
    assert (
        client.post("/clients", json={"name": "x", "permissions": ["users:read"]}, headers=eve.headers).status_code
        == 201
    )
    powerful_id, _ = service(client, admin, ["users:read", "users:delete"])  # made by the superuser
    for method, path, body in [
        ("POST", f"/clients/{powerful_id}/secret", None),  # would hand Eve users:delete
        ("PATCH", f"/clients/{powerful_id}", {"name": "mine now"}),
        ("PATCH", f"/clients/{powerful_id}", {"permissions": ["users:read"]}),
        ("DELETE", f"/clients/{powerful_id}", None),
    ]:
        answer = client.request(method, path, json=body, headers=eve.headers)
        assert answer.status_code == 403 and answer.json()["code"] == "PERMISSION_DENIED", (method, path)
    assert client.get("/clients", headers=eve.headers).json()["count"] == 2


def test_create_client_command(client: TestClient, database_url: str) -> None:
    result = subprocess.run([sys.executable, "-m", "auth_service", "create-client", "--name", "billing",
                             "--permissions", "users:read,audit:read"], cwd=ROOT, env=service_env(database_url),
                            capture_output=True, text=True, timeout=60)  # fmt: skip
    assert result.returncode == 0, result.stderr
    values = dict(line.split("=", 1) for line in result.stdout.split())
    answer = client_token(client, (values["client_id"], values["client_secret"]))
    assert answer.status_code == 200
    assert answer.json()["scope"] == "audit:read users:read"


# --- introspection and revocation -----------------------------------------------------------


def test_introspection_needs_client_credentials(client: TestClient, admin: Account, user: Account) -> None:
    anonymous = client.post("/auth/introspect", data={"token": user.access_token})
    assert anonymous.status_code == 401 and anonymous.json()["error"] == "invalid_client"
    credentials = service(client, admin)
    as_form = client.post("/auth/introspect", data={"token": user.access_token}, auth=credentials)
    assert as_form.status_code == 200 and as_form.json()["active"] is True
    in_form = client.post("/auth/introspect", data={"token": user.access_token, "client_id": credentials[0],
                                                     "client_secret": credentials[1]})  # fmt: skip
    assert in_form.json()["active"] is True
    as_json = client.post("/auth/introspect", json={"token": user.access_token}, auth=credentials)
    assert as_json.json()["sub"] == user.id and as_json.json()["email_verified"] is False
    wrong = client.post("/auth/introspect", data={"token": user.access_token}, auth=(credentials[0], "wrong"))
    assert wrong.status_code == 401
    service_token = client_token(client, service(client, admin, ["users:read"])).json()["access_token"]
    about_client = client.post("/auth/introspect", data={"token": service_token}, auth=credentials).json()
    assert about_client["active"] is True and about_client["client_id"] == about_client["sub"]
    assert about_client["permissions"] == ["users:read"] and "email" not in about_client


@pytest.mark.parametrize("settings_overrides", [{"introspection_requires_client": False}])
def test_introspection_can_be_opened(client: TestClient, user: Account) -> None:
    assert client.post("/auth/introspect", data={"token": user.access_token}).json()["active"] is True


@pytest.mark.parametrize("which", ["refresh_token", "access_token"])
def test_revocation_ends_the_session(which: str, client: TestClient, user: Account) -> None:
    token = user.refresh_token if which == "refresh_token" else user.access_token
    answer = client.post("/auth/revoke", data={"token": token, "token_type_hint": which})
    assert answer.status_code == 200
    assert client.get("/users/me", headers=user.headers).status_code == 401
    assert client.post("/auth/refresh", json={"refresh_token": user.refresh_token}).status_code == 401
    assert client.post("/auth/revoke", data={"token": token}).status_code == 200  # again: still fine


def test_revocation_of_anything_else_is_a_quiet_200(client: TestClient, user: Account, admin: Account) -> None:
    for token in ("garbage", "", "x" * 500):
        assert client.post("/auth/revoke", data={"token": token}).status_code in (200, 422)
    assert client.post("/auth/revoke", json={"token": "garbage"}).status_code == 200
    wrong_client = client.post("/auth/revoke", data={"token": user.refresh_token}, auth=("svc_nobody", "x"))
    assert wrong_client.status_code == 401
    for junk in ("Basic", "Basic !!!", "basic " + base64.b64encode(b"no-colon").decode()):  # broken, not absent
        broken = client.post("/auth/revoke", data={"token": user.refresh_token}, headers={"Authorization": junk})
        assert broken.status_code == 401 and broken.json()["error"] == "invalid_client"
    assert client.post("/auth/revoke", data={"token": "x"}, headers={"Authorization": "Bearer x"}).status_code == 200
    assert client.get("/users/me", headers=user.headers).status_code == 200  # nothing was revoked


# --- the refresh grace interval ---------------------------------------------------------------


def test_reuse_ends_the_session_by_default(client: TestClient, user: Account) -> None:
    assert client.post("/auth/refresh", json={"refresh_token": user.refresh_token}).status_code == 200
    reused = client.post("/auth/refresh", json={"refresh_token": user.refresh_token})
    assert reused.status_code == 401


@pytest.mark.parametrize("settings_overrides", [{"refresh_reuse_grace_seconds": 10}])
def test_within_the_grace_interval_the_same_pair_comes_back(client: TestClient, user: Account, db: Session) -> None:
    first = client.post("/auth/refresh", json={"refresh_token": user.refresh_token})
    second = client.post("/auth/refresh", json={"refresh_token": user.refresh_token})  # another tab
    assert first.status_code == second.status_code == 200
    assert first.json() == second.json()
    assert client.get("/users/me", headers=bearer(second.json()["access_token"])).status_code == 200
    db.exec(update(RefreshToken).values(used_at=utcnow() - timedelta(seconds=11)))  # past the interval
    db.commit()
    late = client.post("/auth/refresh", json={"refresh_token": user.refresh_token})
    assert late.status_code == 401
    db.expire_all()
    assert all(s.revoked_reason == "refresh_reused" for s in db.exec(select(UserSession)).all())
    sealed = db.exec(select(RefreshToken.successor).where(col(RefreshToken.successor).is_not(None))).all()
    assert sealed and all(first.json()["refresh_token"] not in s for s in sealed if s)  # kept sealed, not in clear


@pytest.mark.parametrize("settings_overrides", [{"refresh_reuse_grace_seconds": 10}])
def test_the_grace_covers_only_the_token_just_rotated(client: TestClient, user: Account) -> None:
    """A token rotated twice is reuse, even within the interval: it must not walk the chain
    to the live pair."""
    first = client.post("/auth/refresh", json={"refresh_token": user.refresh_token}).json()
    second = client.post("/auth/refresh", json={"refresh_token": first["refresh_token"]})
    assert second.status_code == 200
    reused = client.post("/auth/refresh", json={"refresh_token": user.refresh_token})
    assert reused.status_code == 401
    assert client.get("/users/me", headers=bearer(second.json()["access_token"])).status_code == 401  # ended
    assert client.post("/auth/refresh", json={"refresh_token": second.json()["refresh_token"]}).status_code == 401


# --- a downstream service, as the README shows it ------------------------------------------------


def test_the_readme_consumer_works_against_a_real_server(live_server: LiveServer, admin: Account) -> None:
    url = live_server.url
    with TestClient(live_server.app) as local:
        local.post("/roles", json={"name": "accounting", "permissions": ["invoices:read", "invoices:approve"]},
                   headers=admin.headers)  # fmt: skip
        ada = register(local, "ada@example.com")
        local.post(f"/users/{ada.id}/roles/accounting", headers=admin.headers)
        credentials = service(local, admin, ["invoices:read"])
    tokens = httpx.post(f"{url}/auth/login", data={"username": ada.email, "password": PASSWORD}).json()
    consumer = TestClient(downstream.create_app(url, *credentials))
    headers = bearer(tokens["access_token"])
    assert consumer.get("/invoices", headers=headers).json() == {"for": ada.id, "client": None}
    assert consumer.post("/invoices/7/approve", headers=headers).json() == {"approved": 7, "by": ada.id}
    service_token = httpx.post(f"{url}/auth/login", data={"grant_type": "client_credentials"}, auth=credentials).json()
    answer = consumer.get("/invoices", headers=bearer(service_token["access_token"]))
    assert answer.json()["client"] == credentials[0]
    assert consumer.get("/invoices", headers=bearer("forged.token.here")).status_code == 401
    httpx.post(f"{url}/auth/logout", headers=headers)
    assert consumer.post("/invoices/7/approve", headers=headers).status_code == 401  # introspection sees the logout
    readme = (ROOT / "README.md").read_text()
    assert (ROOT / "tests" / "examples" / "downstream.py").read_text().split('"""', 2)[2].strip() in readme


def test_basic_credentials_are_form_decoded(client: TestClient, admin: Account) -> None:
    client_id, secret = service(client, admin)
    raw = base64.b64encode(f"{client_id}:{secret}".encode()).decode()
    answer = client.post(
        "/auth/login", data={"grant_type": "client_credentials"}, headers={"Authorization": f"Basic {raw}"}
    )
    assert answer.status_code == 200
    for junk in ("Basic", "Basic !!!", "Basic " + base64.b64encode(b"no-colon").decode()):
        refused = client.post("/auth/login", data={"grant_type": "client_credentials"}, headers={"Authorization": junk})
        assert refused.status_code == 401


# --- found by a review ---------------------------------------------------------------------


def test_a_narrowed_token_grants_only_its_scope(client: TestClient, admin: Account, user: Account) -> None:
    credentials = service(client, admin, ["users:read", "users:delete"])
    narrowed = client_token(client, credentials, scope="users:read").json()
    seen = client.post("/auth/introspect", data={"token": narrowed["access_token"]}, auth=credentials).json()
    assert seen["permissions"] == ["users:read"]
    assert client.delete(f"/users/{user.id}", headers=bearer(narrowed["access_token"])).status_code == 403
    assert client.get("/users", headers=bearer(narrowed["access_token"])).status_code == 200
    # and lowering the client's permissions still counts at once for every token it has
    wide = client_token(client, credentials).json()["access_token"]
    client.patch(f"/clients/{credentials[0]}", json={"permissions": ["users:read"]}, headers=admin.headers)
    assert client.delete(f"/users/{user.id}", headers=bearer(wide)).status_code == 403


def test_revocation_trusts_no_retired_key_and_no_one_elses_session(
    app: FastAPI, client: TestClient, user: Account
) -> None:
    victim_sid = jwt.get_unverified_claims(user.access_token)["sid"]
    now = int(time.time())
    claims = {"sub": str(uuid.uuid4()), "sid": victim_sid, "jti": "x", "iat": now, "exp": now + 600,
              "iss": "auth_service", "aud": "auth_service", "type": "access"}  # fmt: skip
    someone_else = sign_as_the_service(app, claims)  # a valid signature, another user's session
    assert client.post("/auth/revoke", data={"token": someone_else}).status_code == 200
    assert client.get("/users/me", headers=user.headers).status_code == 200  # not revoked
    leaked = sign_as_the_service(app, {**claims, "sub": user.id})
    signing_keys.rotate(app.state.engine, app.state.settings, expire_previous_now=True)  # the key leaked
    assert client.post("/auth/revoke", data={"token": leaked}).status_code == 200
    assert client.post("/auth/refresh", json={"refresh_token": user.refresh_token}).status_code == 200


def test_odd_credentials_and_bodies_are_never_a_500(app: FastAPI, admin: Account) -> None:
    client = TestClient(app, raise_server_exceptions=False)
    deep = "[" * 30000 + "]" * 30000
    basic_nul = base64.b64encode(b"svc_\x00:x").decode()
    grant = {"grant_type": "client_credentials"}
    answers = [
        client.post("/auth/login", data={**grant, "client_id": "svc_\x00", "client_secret": "x"}),
        client.post("/auth/login", data=grant, headers={"Authorization": f"Basic {basic_nul}"}),
        client.get("/clients/a%00b", headers=admin.headers),
    ]
    for path in ("/auth/login", "/auth/introspect", "/auth/revoke"):
        answers.append(client.post(path, data={"token": "x", "grant_type": "client_credentials"},
                                   headers={"Authorization": b"Basic \xe9\xe9\xe9\xe9"}))  # fmt: skip
    for path in ("/auth/introspect", "/auth/revoke"):
        answers.append(client.post(path, content=deep, headers={"content-type": "application/json"}))
        answers.append(client.post(path, json={"token": "x", "client_id": "a\x00", "client_secret": "b"}))
        answers.append(client.post(path, content=b"[1,2]", headers={"content-type": "application/json"}))
    assert all(a.status_code < 500 for a in answers), [(a.request.url.path, a.status_code) for a in answers]


def test_workers_starting_together_after_a_new_secret_key_agree(app: FastAPI, client: TestClient) -> None:
    """Both see a key they cannot unseal and rotate; one wins, the other carries on quietly."""

    def start(settings: Settings, barrier: threading.Barrier, errors: list[BaseException]) -> None:
        barrier.wait()
        try:
            signing_keys.ensure_current(app.state.engine, settings)
        except BaseException as exc:
            errors.append(exc)

    for attempt in range(3):
        key = f"a new secret key {attempt}, 32+ chars long!"
        changed = make_settings(app.state.settings.database_url, secret_key=key)
        barrier, errors = threading.Barrier(2), list[BaseException]()
        threads = [threading.Thread(target=start, args=(changed, barrier, errors)) for _ in range(2)]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()
        assert errors == []
