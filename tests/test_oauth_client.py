"""A standard OAuth2 client library (requests-oauthlib) against the real server: the
password grant, a refresh through the library, and its invalid-grant error."""

import pytest
import requests
from oauthlib.oauth2 import LegacyApplicationClient
from oauthlib.oauth2.rfc6749.errors import InvalidGrantError
from requests_oauthlib import OAuth2Session

from tests.conftest import PASSWORD, LiveServer


@pytest.fixture(autouse=True)
def plain_http_on_loopback(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("OAUTHLIB_INSECURE_TRANSPORT", "1")  # the test server speaks http on 127.0.0.1


def test_password_and_refresh_grants_through_the_library(live_server: LiveServer) -> None:
    token_url = f"{live_server.url}/auth/login"
    created = requests.post(
        f"{live_server.url}/auth/signup", json={"email": "ada@example.com", "password": PASSWORD}, timeout=10
    )
    assert created.status_code == 201

    oauth = OAuth2Session(client=LegacyApplicationClient(client_id="any-app"))
    token = oauth.fetch_token(
        token_url=token_url, username="ada@example.com", password=PASSWORD, include_client_id=True
    )
    assert token["token_type"].lower() == "bearer" and token["refresh_token"]
    me = oauth.get(f"{live_server.url}/users/me")
    assert me.status_code == 200 and me.json()["email"] == "ada@example.com"

    refreshed = oauth.refresh_token(token_url, refresh_token=token["refresh_token"])
    assert refreshed["access_token"] != token["access_token"]
    assert refreshed["refresh_token"] != token["refresh_token"]
    assert oauth.get(f"{live_server.url}/users/me").status_code == 200

    with pytest.raises(InvalidGrantError):  # the rotated token is spent
        OAuth2Session(client=LegacyApplicationClient(client_id="any-app")).refresh_token(
            token_url, refresh_token=token["refresh_token"]
        )


def test_wrong_password_raises_invalid_grant(live_server: LiveServer) -> None:
    requests.post(f"{live_server.url}/auth/signup", json={"email": "ada@example.com", "password": PASSWORD}, timeout=10)
    oauth = OAuth2Session(client=LegacyApplicationClient(client_id="any-app"))
    with pytest.raises(InvalidGrantError):
        oauth.fetch_token(token_url=f"{live_server.url}/auth/login", username="ada@example.com", password="wrong one")
