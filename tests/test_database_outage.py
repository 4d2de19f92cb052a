"""PostgreSQL going away and coming back, with the service running: requests get 503 (never
a 500, never a hang), and the service recovers by itself, without a restart. The pool has
no pre-ping (a round trip per request), so this is what proves recovery."""

from collections.abc import Iterator
from typing import Any

import pytest
from fastapi.testclient import TestClient
from sqlalchemy import create_engine, text
from sqlalchemy.engine import make_url

from auth_service.main import create_app
from tests.conftest import BACKENDS, PASSWORD, make_settings
from tests.support import free_port, tcp_proxy

pytestmark = pytest.mark.skipif("postgresql" not in BACKENDS, reason="needs PostgreSQL (TEST_DATABASE_URL)")


@pytest.fixture
def through_a_proxy(database_url: str, client: TestClient) -> Iterator[tuple[str, int, tuple[str, int]]]:
    """The test database, reached through a TCP proxy we can cut (the `client` fixture emptied it)."""
    if not database_url.startswith("postgresql"):
        pytest.skip("PostgreSQL only")
    url = make_url(database_url)
    port = free_port()
    proxied = url.set(host="127.0.0.1", port=port).render_as_string(hide_password=False)
    yield proxied, port, (url.host or "127.0.0.1", url.port or 5432)


def answers(http: TestClient, headers: dict[str, str], times: int) -> list[int]:
    return [http.get("/users/me", headers=headers).status_code for _ in range(times)]


def test_the_service_rides_out_a_database_outage(through_a_proxy: Any, database_url: str) -> None:
    proxied, port, target = through_a_proxy
    app = create_app(make_settings(proxied))
    with tcp_proxy(port, target), TestClient(app, raise_server_exceptions=False) as http:
        http.post("/auth/signup", json={"email": "ada@example.com", "password": PASSWORD}).raise_for_status()
        tokens = http.post("/auth/login", data={"username": "ada@example.com", "password": PASSWORD}).json()
        headers = {"Authorization": f"Bearer {tokens['access_token']}"}
        assert answers(http, headers, 3) == [200, 200, 200]
    # the proxy is closed: every pooled connection is cut, and new ones are refused
    with TestClient(app, raise_server_exceptions=False) as http:
        down = [http.get("/users/me", headers=headers), http.post("/auth/refresh", json={
            "refresh_token": tokens["refresh_token"]}), http.get("/health/ready")]  # fmt: skip
        assert [r.status_code for r in down] == [503, 503, 503]
        assert all(r.json()["code"] == "SERVICE_UNAVAILABLE" and r.headers["retry-after"] for r in down)
        assert http.get("/health").status_code == 200  # liveness does not need the database
        with tcp_proxy(port, target):  # back, on the same address: no restart
            assert answers(http, headers, 3) == [200, 200, 200]
            assert http.get("/health/ready").status_code == 200
            refreshed = http.post("/auth/refresh", json={"refresh_token": tokens["refresh_token"]})
            assert refreshed.status_code == 200
    app.state.engine.dispose()


def test_connections_killed_by_the_server_are_replaced_at_once(database_url: str, client: TestClient) -> None:
    """pg_terminate_backend on every connection of the pool (a failover, an idle timeout):
    the next authenticated request still answers 200, retrying its read once."""
    if not database_url.startswith("postgresql"):
        pytest.skip("PostgreSQL only")
    http = client
    http.post("/auth/signup", json={"email": "ada@example.com", "password": PASSWORD}).raise_for_status()
    tokens = http.post("/auth/login", data={"username": "ada@example.com", "password": PASSWORD}).json()
    headers = {"Authorization": f"Bearer {tokens['access_token']}"}
    assert answers(http, headers, 3) == [200, 200, 200]
    admin = create_engine(database_url, isolation_level="AUTOCOMMIT")
    with admin.connect() as connection:
        killed = connection.execute(
            text(
                "SELECT count(pg_terminate_backend(pid)) FROM pg_stat_activity "
                "WHERE datname = current_database() AND pid <> pg_backend_pid()"
            )
        ).scalar()
    admin.dispose()
    assert killed and killed >= 1
    assert answers(http, headers, 3) == [200, 200, 200]
    after = [http.post("/auth/refresh", json={"refresh_token": tokens["refresh_token"]}).status_code]
    assert after[0] in (200, 503)  # a write on a dead connection may fail once; never a 500
    assert answers(http, headers, 2) == [200, 200]
