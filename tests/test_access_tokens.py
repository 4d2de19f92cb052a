"""Access tokens: their claims, and every forgery we could think of refused with a 401,
with the default ES256 (a private key only we hold) and with HS256 (SECRET_KEY)."""

import base64
import hashlib
import hmac
import json
import time
from typing import Any

import pytest
from fastapi import FastAPI
from fastapi.testclient import TestClient
from jose import jwk, jwt

from auth_service import signing_keys
from auth_service.config import Settings
from auth_service.db import new_session
from auth_service.security import Signer, unseal
from tests.conftest import Account


@pytest.fixture(params=["ES256", "HS256"])
def settings_overrides(request: pytest.FixtureRequest) -> dict[str, Any]:
    return {"jwt_algorithm": request.param}


@pytest.fixture
def forge(client: TestClient, app: FastAPI, settings: Settings) -> Any:
    """Sign any claims exactly as the service does (with its own key): a forger's best case."""
    with new_session(app.state.engine) as session:
        signer = signing_keys.signer(session, settings)

    def sign(claims: dict[str, Any], key: Any = None, algorithm: str | None = None, kid: Any = ...) -> str:
        headers = {"kid": signer.kid if kid is ... else kid} if (signer.kid or kid is not ...) else None
        if kid is None:
            headers = None
        token: str = jwt.encode(claims, key or signer.key, algorithm=algorithm or signer.algorithm, headers=headers)
        return token

    sign.signer = signer  # type: ignore[attr-defined]
    return sign


def b64(data: dict[str, Any]) -> str:
    return base64.urlsafe_b64encode(json.dumps(data).encode()).rstrip(b"=").decode()


def hs256_by_hand(claims: dict[str, Any], secret: bytes, kid: str | None) -> str:
    """An HS256 token keyed with `secret` (python-jose itself refuses a public key as one)."""
    signing_input = f"{b64({'alg': 'HS256', 'typ': 'JWT', 'kid': kid})}.{b64(claims)}"
    mac = hmac.new(secret, signing_input.encode(), hashlib.sha256).digest()
    return f"{signing_input}.{base64.urlsafe_b64encode(mac).rstrip(b'=').decode()}"


def test_claims(user: Account, settings: Settings) -> None:
    claims = jwt.get_unverified_claims(user.access_token)
    header = jwt.get_unverified_header(user.access_token)
    assert header["alg"] == settings.jwt_algorithm
    assert ("kid" in header) == (settings.jwt_algorithm == "ES256")
    assert claims["sub"] == user.id
    assert claims["type"] == "access" and claims["iss"] == "auth_service" and claims["aud"] == "auth_service"
    assert {"sid", "jti", "iat", "exp", "roles", "permissions"} <= set(claims)
    assert claims["exp"] - claims["iat"] == 30 * 60


def good_claims(user: Account) -> dict[str, Any]:
    claims: dict[str, Any] = jwt.get_unverified_claims(user.access_token)
    return claims


def test_a_correctly_forged_token_works_so_the_refusals_below_mean_something(
    client: TestClient, user: Account, forge: Any
) -> None:
    token = forge(good_claims(user))
    assert client.get("/users/me", headers={"Authorization": f"Bearer {token}"}).status_code == 200


@pytest.mark.parametrize(
    "change",
    [
        {"aud": "another-service"},
        {"iss": "someone-else"},
        {"type": "refresh"},
        {"type": None},
        {"sub": "not-a-uuid"},
        {"sid": "00000000-0000-4000-8000-000000000000"},
        {"sub": "00000000-0000-4000-8000-000000000000"},
        {"exp": None},
        {"sid": None},
    ],
)
def test_tampered_claims_are_refused(client: TestClient, user: Account, change: dict[str, Any], forge: Any) -> None:
    claims = {k: v for k, v in {**good_claims(user), **change}.items() if v is not None}
    response = client.get("/users/me", headers={"Authorization": f"Bearer {forge(claims)}"})
    assert response.status_code == 401
    assert response.json()["code"] == "INVALID_TOKEN"
    assert response.headers["www-authenticate"] == 'Bearer error="invalid_token"'


def test_expired_token(client: TestClient, user: Account, forge: Any) -> None:
    claims = {**good_claims(user), "iat": int(time.time()) - 3600, "exp": int(time.time()) - 60}
    response = client.get("/users/me", headers={"Authorization": f"Bearer {forge(claims)}"})
    assert response.status_code == 401
    assert response.json()["code"] == "TOKEN_EXPIRED"
    assert response.headers["www-authenticate"] == 'Bearer error="invalid_token"'


def test_wrong_key_and_algorithms(client: TestClient, user: Account, forge: Any, settings: Settings) -> None:
    claims = good_claims(user)
    header, payload, _ = user.access_token.split(".")
    signer: Signer = forge.signer
    if signer.kid:  # ES256
        public_pem = signer.key.public_key().to_pem()  # type: ignore[union-attr]
        public_jwk = json.dumps(signer.key.public_key().to_dict())  # type: ignore[union-attr]
        other = signing_keys._generate(settings)  # a key of ours that was never stored
        wrong = [
            hs256_by_hand(claims, public_pem, signer.kid),  # algorithm confusion: HMAC keyed with the public key
            hs256_by_hand(claims, public_jwk.encode(), signer.kid),
            forge(claims, kid="unknown-kid"),  # our key, a kid we never published
            forge(claims, kid=None),  # no kid at all
            forge(claims, key=jwk.construct(  # another key under our kid
                unseal(settings, signing_keys.SEAL_PURPOSE, other.private_key).decode(), "ES256")),
            forge(claims, kid=other.kid),
        ]  # fmt: skip
    else:
        wrong = [
            forge(claims, key="another-key-of-sufficient-length-0123456789"),
            forge(claims, algorithm="HS512"),  # right key, algorithm not on the list
        ]
    tokens = [
        *wrong,
        f"{b64({'alg': 'none', 'typ': 'JWT'})}.{payload}.",
        f"{b64({'alg': 'none', 'typ': 'JWT'})}.{payload}",
        f"{b64({'alg': 'RS256', 'typ': 'JWT'})}.{payload}.{user.access_token.split('.')[2]}",
        f"{b64({'alg': 'HS256', 'jwk': {'kty': 'oct', 'k': 'AAAA'}})}.{payload}.AAAA",
        f"{header}.{payload}.{'A' * 43}",
        f"{header}.{b64({**claims, 'sub': 'x'})}.{user.access_token.split('.')[2]}",
    ]
    for token in tokens:
        response = client.get("/users/me", headers={"Authorization": f"Bearer {token}"})
        assert response.status_code == 401, token
        assert response.json()["code"] == "INVALID_TOKEN"


@pytest.mark.parametrize(
    "token", ["", "x", "a.b", "a.b.c", "a.b.c.d.e", "....", "\u00e9t\u00e9", "Bearer", "eyJhbGciOiJIUzI1NiJ9..", "%00"]
)
def test_garbage_tokens_never_give_5xx(client: TestClient, token: str) -> None:
    response = client.get("/users/me", headers={"Authorization": f"Bearer {token}".encode()})  # raw UTF-8 bytes
    assert response.status_code == 401
    assert response.json()["code"] in ("INVALID_TOKEN", "NOT_AUTHENTICATED")


def test_no_token_and_other_schemes(client: TestClient, user: Account) -> None:
    for headers in ({}, {"Authorization": f"Basic {user.access_token}"}, {"Authorization": user.access_token}):
        response = client.get("/users/me", headers=headers)
        assert response.status_code == 401
        assert response.json() == {"detail": "Not authenticated.", "code": "NOT_AUTHENTICATED"}
        assert response.headers["www-authenticate"] == "Bearer"


def test_token_of_a_deleted_user(client: TestClient, user: Account, admin: Account) -> None:
    assert client.delete(f"/users/{user.id}", headers=admin.headers).status_code == 204
    assert client.get("/users/me", headers=user.headers).status_code == 401
