"""Two-factor authentication (issue 12), through HTTP, with codes computed by our own
RFC 6238 implementation (not the service's): enrolment, the two-step login, the Swagger
way, replays, recovery codes, the lock, turning it off, an admin's reset, and the policy
for superusers."""

import base64
import hashlib
import hmac
import struct
import time
from concurrent.futures import ThreadPoolExecutor
from typing import Annotated, Any
from urllib.parse import parse_qs, unquote, urlparse

import httpx
import pytest
from fastapi import Depends, FastAPI
from fastapi.testclient import TestClient
from jose import jwt
from sqlmodel import Session, select

from auth_service.deps import require_permission
from auth_service.mfa import MFA_GRANT
from auth_service.models import User
from auth_service.principals import Principal
from tests.conftest import PASSWORD, Account, login, queued_mails, register, service

NEW_PASSWORD = "a brand new passphrase"


def totp(secret: str, at: float | None = None, step_offset: int = 0) -> str:
    """RFC 6238 with SHA-1, 30 s steps, 6 digits."""
    key = base64.b32decode(secret + "=" * (-len(secret) % 8))
    counter = int((time.time() if at is None else at) // 30) + step_offset
    digest = hmac.new(key, struct.pack(">Q", counter), hashlib.sha1).digest()
    offset = digest[-1] & 0x0F
    return f"{(struct.unpack('>I', digest[offset : offset + 4])[0] & 0x7FFFFFFF) % 1_000_000:06d}"


def bearer(token: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}"}


def enrol(client: TestClient, account: Account) -> tuple[str, list[str]]:
    """Turn TOTP on for the account: its secret and recovery codes."""
    started = client.post("/users/me/mfa/totp", json={"current_password": account.password}, headers=account.headers)
    assert started.status_code == 200, started.text
    secret = started.json()["secret"]
    confirmed = client.post("/users/me/mfa/totp/confirm", json={"code": totp(secret)}, headers=account.headers)
    assert confirmed.status_code == 200, confirmed.text
    return secret, confirmed.json()["recovery_codes"]


def password_step(client: TestClient, email: str, password: str = PASSWORD) -> httpx.Response:
    response: httpx.Response = client.post("/auth/login", data={"username": email, "password": password})
    return response


def code_step(client: TestClient, mfa_token: str, code: str) -> httpx.Response:
    response: httpx.Response = client.post(
        "/auth/login", data={"grant_type": MFA_GRANT, "mfa_token": mfa_token, "otp": code}
    )
    return response


def fresh_code(secret: str, used: set[str]) -> str:
    """A code of the next step not used yet (each step's code works once)."""
    for offset in (0, 1):
        code = totp(secret, step_offset=offset)
        if code not in used:
            used.add(code)
            return code
    raise AssertionError("no fresh code")


# --- enrolment -----------------------------------------------------------------------------


def test_enrolment_needs_the_password_and_a_code(client: TestClient, user: Account, db: Session) -> None:
    wrong = client.post("/users/me/mfa/totp", json={"current_password": "a guess"}, headers=user.headers)
    assert wrong.status_code == 400 and wrong.json()["code"] == "INVALID_CREDENTIALS"
    started = client.post("/users/me/mfa/totp", json={"current_password": PASSWORD}, headers=user.headers)
    body = started.json()
    uri = urlparse(body["otpauth_uri"])
    assert uri.scheme == "otpauth" and uri.netloc == "totp"
    assert unquote(uri.path) == f"/auth_service:{user.email}"
    query = parse_qs(uri.query)
    assert query["secret"] == [body["secret"]] and query["issuer"] == ["auth_service"]
    assert body["qr_code"].startswith("data:image/svg+xml;base64,")
    assert b"<svg" in base64.b64decode(body["qr_code"].split(",", 1)[1])
    # nothing is on until confirmed
    assert client.get("/users/me/mfa", headers=user.headers).json() == {
        "enabled": False, "enabled_at": None, "pending": True, "recovery_codes_left": 0}  # fmt: skip
    assert password_step(client, user.email).status_code == 200
    bad = client.post("/users/me/mfa/totp/confirm", json={"code": "000000"}, headers=user.headers)
    assert bad.status_code == 400
    other_session = login(client, user.email)
    confirmed = client.post("/users/me/mfa/totp/confirm", json={"code": totp(body["secret"])}, headers=user.headers)
    codes = confirmed.json()["recovery_codes"]
    assert confirmed.status_code == 200 and len(codes) == 10 and len(set(codes)) == 10
    assert client.get("/users/me", headers=user.headers).json()["mfa_enabled"] is True  # this session goes on
    assert client.get("/users/me", headers=bearer(other_session["access_token"])).status_code == 401  # others end
    assert client.get("/users/me/mfa", headers=user.headers).json()["recovery_codes_left"] == 10
    # the secret is sealed at rest, the codes hashed
    [row] = db.exec(select(User)).all()
    assert row.totp_secret and body["secret"] not in row.totp_secret and row.totp_pending_secret is None
    again = client.post("/users/me/mfa/totp", json={"current_password": PASSWORD}, headers=user.headers)
    assert again.status_code == 409


def test_the_qr_code_comes_as_an_image_when_asked(client: TestClient, user: Account) -> None:
    png = client.post("/users/me/mfa/totp", json={"current_password": PASSWORD},
                      headers={**user.headers, "Accept": "image/png"})  # fmt: skip
    assert png.status_code == 200 and png.headers["content-type"] == "image/png"
    assert png.content.startswith(b"\x89PNG")


@pytest.mark.parametrize("settings_overrides", [{"mfa_issuer": "Acme Corp"}])
def test_the_issuer_follows_the_setting(client: TestClient, user: Account) -> None:
    body = client.post("/users/me/mfa/totp", json={"current_password": PASSWORD}, headers=user.headers).json()
    assert parse_qs(urlparse(body["otpauth_uri"]).query)["issuer"] == ["Acme Corp"]


# --- logging in ------------------------------------------------------------------------------


def test_two_step_login(client: TestClient, user: Account) -> None:
    secret, _ = enrol(client, user)
    first = password_step(client, user.email)
    assert first.status_code == 403
    body = first.json()
    assert body["error"] == "mfa_required" and body["code"] == "MFA_REQUIRED" and body["mfa_token"]
    assert "access_token" not in body and first.headers["cache-control"] == "no-store"
    assert password_step(client, user.email, "a wrong password").status_code == 400  # no hint either way
    used = {totp(secret)}  # enrolment used the current step's code
    tokens = code_step(client, body["mfa_token"], fresh_code(secret, used))
    assert tokens.status_code == 200, tokens.text
    claims = jwt.get_unverified_claims(tokens.json()["access_token"])
    assert claims["amr"] == ["pwd", "otp"]
    assert client.get("/users/me", headers=bearer(tokens.json()["access_token"])).status_code == 200
    refreshed = client.post("/auth/refresh", json={"refresh_token": tokens.json()["refresh_token"]})
    assert jwt.get_unverified_claims(refreshed.json()["access_token"])["amr"] == ["pwd", "otp"]  # kept
    assert code_step(client, body["mfa_token"], "000000").json()["code"] == "INVALID_TOKEN"  # single use


def test_a_code_is_accepted_once(client: TestClient, user: Account) -> None:
    secret, _ = enrol(client, user)  # that used the current step's code already
    code = totp(secret, step_offset=1)
    token = password_step(client, user.email).json()["mfa_token"]
    assert code_step(client, token, code).status_code == 200
    replay_token = password_step(client, user.email).json()["mfa_token"]
    replayed = code_step(client, replay_token, code)
    assert replayed.status_code == 400 and replayed.json()["error"] == "invalid_grant"
    older = code_step(client, replay_token, totp(secret))  # an earlier step than one already used
    assert older.status_code == 400


def test_two_requests_with_one_code_one_wins(client: TestClient, user: Account) -> None:
    secret, _ = enrol(client, user)
    code = totp(secret, step_offset=1)
    tokens = [password_step(client, user.email).json()["mfa_token"] for _ in range(2)]
    with ThreadPoolExecutor(2) as pool:
        statuses = sorted(pool.map(lambda t: code_step(client, t, code).status_code, tokens))
    assert statuses == [200, 400]


@pytest.mark.parametrize("where", ["form", "basic", "otp"])
def test_the_code_in_one_request_the_swagger_way(where: str, client: TestClient, user: Account) -> None:
    secret, _ = enrol(client, user)
    code = totp(secret, step_offset=1)
    form = {"username": user.email, "password": PASSWORD}
    if where == "form":
        answer = client.post("/auth/login", data={**form, "client_id": "", "client_secret": code})
    elif where == "basic":  # what Swagger's Authorize dialog sends by default
        raw = base64.b64encode(f":{code}".encode()).decode()
        answer = client.post("/auth/login", data=form, headers={"Authorization": f"Basic {raw}"})
    else:
        answer = client.post("/auth/login", data={**form, "otp": code})
    assert answer.status_code == 200, answer.text
    assert jwt.get_unverified_claims(answer.json()["access_token"])["amr"] == ["pwd", "otp"]
    wrong = client.post("/auth/login", data={**form, "client_secret": "000000"})
    assert wrong.status_code == 400 and wrong.json()["code"] == "INVALID_CREDENTIALS"


def test_without_two_factor_the_client_secret_field_is_ignored(client: TestClient, user: Account) -> None:
    answer = client.post("/auth/login", data={"username": user.email, "password": PASSWORD, "client_secret": "123456"})
    assert answer.status_code == 200
    assert jwt.get_unverified_claims(answer.json()["access_token"])["amr"] == ["pwd"]


def test_recovery_codes_work_once_each(client: TestClient, user: Account, admin: Account) -> None:
    _, codes = enrol(client, user)
    for left, code in zip(range(9, 6, -1), codes[:3], strict=True):
        token = password_step(client, user.email).json()["mfa_token"]
        answer = code_step(client, token, code.upper().replace("-", " "))  # any case, any separator
        assert answer.status_code == 200
        assert client.get("/users/me/mfa", headers=bearer(answer.json()["access_token"])).json()[
            "recovery_codes_left"] == left  # fmt: skip
    token = password_step(client, user.email).json()["mfa_token"]
    assert code_step(client, token, codes[0]).status_code == 400  # spent
    mails = [m for m in queued_mails(client.app, user.email) if "recovery code" in m["subject"].lower()]  # type: ignore[arg-type]
    assert len(mails) == 3 and "7 of your recovery codes are left" in mails[-1]["text"]
    events = client.get("/audit-events", params={"type": "mfa.recovery_code_used"}, headers=admin.headers).json()
    assert events["count"] == 3 and all(code not in str(events) for code in codes)


def test_wrong_codes_lock_the_account(client: TestClient, user: Account, admin: Account) -> None:
    secret, _ = enrol(client, user)
    token = password_step(client, user.email).json()["mfa_token"]
    for _ in range(5):  # LOGIN_MAX_FAILURES
        assert code_step(client, token, "000000").status_code == 400
    locked = code_step(client, token, totp(secret, step_offset=1))
    assert locked.status_code == 429 and locked.headers["retry-after"]
    assert password_step(client, user.email).status_code == 429  # the same lock as passwords
    failures = client.get("/audit-events", params={"type": "auth.login_failed"}, headers=admin.headers).json()["data"]
    assert [e["details"]["reason"] for e in failures] == ["otp"] * 5


# --- managing it ------------------------------------------------------------------------------


def test_turning_it_off_needs_the_password_and_a_code(client: TestClient, user: Account, admin: Account) -> None:
    secret, _ = enrol(client, user)
    used = {totp(secret)}
    for body in ({"password": "a guess", "code": fresh_code(secret, set())}, {"password": PASSWORD, "code": "000000"}):
        assert client.request("DELETE", "/users/me/mfa/totp", json=body, headers=user.headers).status_code == 400
    body = {"password": PASSWORD, "code": fresh_code(secret, used)}
    assert client.request("DELETE", "/users/me/mfa/totp", json=body, headers=user.headers).status_code == 204
    assert client.get("/users/me", headers=user.headers).json()["mfa_enabled"] is False
    assert password_step(client, user.email).status_code == 200  # the password alone again
    [mail] = [m for m in queued_mails(client.app, user.email) if "turned off" in m["subject"]]  # type: ignore[arg-type]
    assert "by an administrator" not in mail["text"]
    assert client.get("/audit-events", params={"type": "mfa.disabled"}, headers=admin.headers).json()["count"] == 1


def test_new_recovery_codes_replace_the_old_ones(client: TestClient, user: Account) -> None:
    _, old = enrol(client, user)
    answer = client.post(
        "/users/me/mfa/recovery-codes", json={"password": PASSWORD, "code": old[0]}, headers=user.headers
    )
    assert answer.status_code == 200
    new = answer.json()["recovery_codes"]
    assert len(new) == 10 and not set(new) & set(old)
    token = password_step(client, user.email).json()["mfa_token"]
    assert code_step(client, token, old[1]).status_code == 400
    assert code_step(client, token, new[0]).status_code == 200


def test_an_admin_resets_a_lost_second_factor(client: TestClient, user: Account, admin: Account) -> None:
    enrol(client, user)
    helpdesk = register(client, "eve@example.com")
    client.post(
        "/roles", json={"name": "helpdesk", "permissions": ["users:read", "users:write"]}, headers=admin.headers
    )
    client.post(f"/users/{helpdesk.id}/roles/helpdesk", headers=admin.headers)
    helpdesk_tokens = login(client, helpdesk.email)
    assert client.delete(f"/users/{admin.id}/mfa", headers=bearer(helpdesk_tokens["access_token"])).status_code == 403
    assert client.delete(f"/users/{user.id}/mfa", headers=user.headers).status_code == 403  # needs users:write
    assert client.delete(f"/users/{user.id}/mfa", headers=bearer(helpdesk_tokens["access_token"])).status_code == 204
    assert client.get("/users/me", headers=user.headers).status_code == 401  # their sessions ended
    assert password_step(client, user.email).status_code == 200
    [mail] = [m for m in queued_mails(client.app, user.email) if "turned off" in m["subject"]]  # type: ignore[arg-type]
    assert "by an administrator" in mail["text"]
    events = client.get("/audit-events", params={"type": "mfa.reset_by_admin"}, headers=admin.headers).json()["data"]
    assert [(e["actor_id"], e["subject_id"]) for e in events] == [(helpdesk.id, user.id)]
    assert client.delete(f"/users/{user.id}/mfa", headers=admin.headers).status_code == 404  # nothing to reset


# --- policy ----------------------------------------------------------------------------------


@pytest.mark.parametrize("settings_overrides", [{"mfa_required_for_superusers": True}])
def test_superusers_must_enrol_before_anything_else(client: TestClient, admin: Account) -> None:
    claims = jwt.get_unverified_claims(admin.access_token)
    assert claims["permissions"] == [] and claims["mfa_enrollment_required"] is True
    refused = client.get("/users", headers=admin.headers)
    assert refused.status_code == 403 and refused.json()["code"] == "MFA_ENROLLMENT_REQUIRED"
    assert client.get("/users/me", headers=admin.headers).status_code == 200
    assert client.get("/users/me/mfa", headers=admin.headers).status_code == 200
    secret, _ = enrol(client, admin)
    assert client.get("/users", headers=admin.headers).status_code == 200  # this session may now
    token = password_step(client, admin.email, admin.password).json()["mfa_token"]
    fresh = code_step(client, token, totp(secret, step_offset=1)).json()
    assert "users:read" in jwt.get_unverified_claims(fresh["access_token"])["permissions"]


def test_endpoints_can_require_a_second_factor(app: FastAPI, client: TestClient, user: Account) -> None:
    @app.post("/payouts")
    def payout(principal: Annotated[Principal, Depends(require_permission(second_factor=True))]) -> dict[str, Any]:
        return {"amr": list(principal.amr)}

    refused = client.post("/payouts", headers=user.headers)
    assert refused.status_code == 403 and refused.json()["code"] == "MFA_REQUIRED"
    secret, _ = enrol(client, user)
    token = password_step(client, user.email).json()["mfa_token"]
    fresh = code_step(client, token, totp(secret, step_offset=1)).json()
    assert client.post("/payouts", headers=bearer(fresh["access_token"])).json() == {"amr": ["pwd", "otp"]}


def test_nothing_secret_is_logged_or_audited(
    client: TestClient, user: Account, admin: Account, caplog: pytest.LogCaptureFixture
) -> None:
    secret, codes = enrol(client, user)
    token = password_step(client, user.email).json()["mfa_token"]
    code_step(client, token, codes[0])
    audit = client.get("/audit-events", headers=admin.headers).text
    logs = "\n".join(r.getMessage() for r in caplog.records)
    for secret_thing in (secret, token, codes[0], codes[0].replace("-", "")):
        assert secret_thing not in audit and secret_thing not in logs


# --- found by a review ------------------------------------------------------------------------


def test_codes_in_other_scripts_are_wrong_not_a_500(app: FastAPI, user: Account) -> None:
    client = TestClient(app, raise_server_exceptions=False)
    enrol(client, user)
    arabic = "\u0661\u0662\u0663\u0664\u0665\u0666"  # six Arabic-Indic digits
    one = client.post("/auth/login", data={"username": user.email, "password": PASSWORD, "otp": arabic})
    token = password_step(client, user.email).json()["mfa_token"]
    two = code_step(client, token, "\uff11" * 6)  # fullwidth
    other = register(client, "bob@example.com")
    client.post("/users/me/mfa/totp", json={"current_password": PASSWORD}, headers=other.headers)
    three = client.post("/users/me/mfa/totp/confirm", json={"code": arabic}, headers=other.headers)
    assert [one.status_code, two.status_code, three.status_code] == [400, 400, 400]


def test_guessing_the_code_of_a_pending_enrolment_locks_like_passwords(client: TestClient, user: Account) -> None:
    """A stolen access token cannot finish an enrolment its owner started by guessing."""
    client.post("/users/me/mfa/totp", json={"current_password": PASSWORD}, headers=user.headers)
    for i in range(5):
        assert (
            client.post("/users/me/mfa/totp/confirm", json={"code": f"{i:06d}"}, headers=user.headers).status_code
            == 400
        )
    locked = client.post("/users/me/mfa/totp/confirm", json={"code": "000099"}, headers=user.headers)
    assert locked.status_code == 429
    assert password_step(client, user.email).status_code == 429


@pytest.mark.parametrize(
    "settings_overrides", [{"mfa_required_for_superusers": True, "introspection_requires_client": False}]
)
def test_introspection_follows_the_enrolment_policy(client: TestClient, admin: Account) -> None:
    seen = client.post("/auth/introspect", data={"token": admin.access_token}).json()
    assert seen["active"] is True and seen["permissions"] == [] and seen["roles"] == [] and seen["amr"] == ["pwd"]


def test_an_admin_cannot_reset_their_own_second_factor_with_a_token_alone(client: TestClient, admin: Account) -> None:
    enrol(client, admin)
    answer = client.delete(f"/users/{admin.id}/mfa", headers=admin.headers)
    assert answer.status_code == 409 and answer.json()["code"] == "CONFLICT"
    assert password_step(client, admin.email, admin.password).status_code == 403  # still mfa_required


def test_a_real_clients_secret_is_never_taken_for_a_code(client: TestClient, user: Account, admin: Account) -> None:
    enrol(client, user)
    client_id, secret = service(client, admin)
    form = {"username": user.email, "password": PASSWORD}
    in_form = {**form, "client_id": client_id, "client_secret": secret}
    for answer in (
        client.post("/auth/login", data=form, auth=(client_id, secret)),
        client.post("/auth/login", data=in_form),
    ):
        assert answer.status_code == 403 and answer.json()["error"] == "mfa_required"
    assert password_step(client, user.email).status_code == 403  # not locked


def test_a_right_password_elsewhere_does_not_reset_the_count_of_wrong_codes(client: TestClient, user: Account) -> None:
    enrol(client, user)
    token = password_step(client, user.email).json()["mfa_token"]
    for _ in range(4):
        assert code_step(client, token, "000000").status_code == 400
    same_email = client.patch(
        "/users/me", json={"email": user.email, "current_password": PASSWORD}, headers=user.headers
    )
    assert same_email.status_code == 200
    assert code_step(client, token, "000000").status_code == 400  # the 5th failure: locked now
    assert code_step(client, token, "000001").status_code == 429
