"""PostgreSQL going away and coming back, with the service running: requests get 503 (never
a 500, never a hang), and the service recovers by itself, without a restart. The pool has
no pre-ping (a round trip per request), so this is what proves recovery."""

import asyncio
import logging
import socket
import threading
import time
from collections.abc import Coroutine, Iterator
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import pytest
from fastapi import FastAPI
from fastapi.testclient import TestClient
from sqlalchemy import create_engine, text
from sqlalchemy.engine import make_url

from auth_service.async_reads import AsyncReads
from auth_service.db import make_engine
from auth_service.errors import AppError
from auth_service.main import create_app
from auth_service.outbox import run_sender
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


def kill_every_other_connection(database_url: str) -> int:
    """What a failover or an idle timeout does to every connection the service holds."""
    admin = create_engine(database_url, isolation_level="AUTOCOMMIT")
    with admin.connect() as connection:
        killed = connection.execute(
            text(
                "SELECT count(pg_terminate_backend(pid)) FROM pg_stat_activity "
                "WHERE datname = current_database() AND pid <> pg_backend_pid()"
            )
        ).scalar()
    admin.dispose()
    return int(killed or 0)


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
    assert kill_every_other_connection(database_url) >= 1
    assert answers(http, headers, 3) == [200, 200, 200]
    after = [http.post("/auth/refresh", json={"refresh_token": tokens["refresh_token"]}).status_code]
    assert after[0] in (200, 503)  # a write on a dead connection may fail once; never a 500
    assert answers(http, headers, 2) == [200, 200]


def test_a_read_retried_after_a_killed_connection_opens_a_new_one(database_url: str, app: FastAPI) -> None:
    """Several idle read connections all killed (a failover): the retry must not take the
    next dead one from the idle list."""
    if not database_url.startswith("postgresql"):
        pytest.skip("PostgreSQL only")
    reads = AsyncReads(app.state.engine, size=4, timeout=5, connect_timeout=5, prepared=True)

    async def scenario() -> list[tuple[Any, ...]]:
        def read() -> Coroutine[Any, Any, list[tuple[Any, ...]]]:
            return reads.fetch("probe", "PREPARE probe AS SELECT pg_sleep(0.05)", "EXECUTE probe", "SELECT 1", {})

        await asyncio.gather(read(), read(), read())  # three connections, idle now
        assert kill_every_other_connection(database_url) >= 3
        await asyncio.sleep(0.2)
        return await read()

    try:
        assert asyncio.run(scenario())
    finally:
        reads.close()


def test_reads_wait_for_a_connection_within_their_deadline(database_url: str) -> None:
    """A database that accepts connections and never answers: every read answers 503 after
    DATABASE_READ_TIMEOUT_SECONDS, waiting for a connection included (no queue of timeouts)."""
    if not database_url.startswith("postgresql"):
        pytest.skip("PostgreSQL only")
    with socket.socket() as silent:
        silent.bind(("127.0.0.1", 0))
        silent.listen(64)
        url = make_url(database_url).set(host="127.0.0.1", port=silent.getsockname()[1])
        engine = create_engine(url)
        reads = AsyncReads(engine, size=2, timeout=0.5, connect_timeout=5, prepared=True)

        async def one() -> float:
            started = time.monotonic()
            with pytest.raises(AppError) as refused:
                await reads.fetch("p", "PREPARE p AS SELECT 1", "EXECUTE p", "SELECT 1", {})
            assert refused.value.status_code == 503
            return time.monotonic() - started

        async def many() -> list[float]:
            return await asyncio.gather(*(one() for _ in range(8)))

        try:
            waits = asyncio.run(many())
        finally:
            reads.close()
            engine.dispose()
    assert max(waits) < 1.5, waits  # each within its own deadline, not 4 deadlines in a row


@pytest.mark.parametrize("settings_overrides", [{"database_read_connections": 1}])
def test_one_app_on_two_event_loops(database_url: str, app: Any) -> None:
    """Each TestClient block runs the app on a new event loop; the reads' limit on
    connections must follow it, not stay bound to the first."""
    if not database_url.startswith("postgresql"):
        pytest.skip("PostgreSQL only")

    def burst(http: TestClient, headers: dict[str, str]) -> list[int]:
        with ThreadPoolExecutor(6) as pool:
            return list(pool.map(lambda _: http.get("/users/me", headers=headers).status_code, range(6)))

    with TestClient(app, raise_server_exceptions=False) as http:
        http.post("/auth/signup", json={"email": "ada@example.com", "password": PASSWORD}).raise_for_status()
        token = http.post("/auth/login", data={"username": "ada@example.com", "password": PASSWORD}).json()
        headers = {"Authorization": f"Bearer {token['access_token']}"}
        first = burst(http, headers)
    with TestClient(app, raise_server_exceptions=False) as http:
        second = burst(http, headers)
    assert first + second == [200] * 12


def test_a_column_type_change_breaks_no_connection(database_url: str, app: FastAPI) -> None:
    """A migration that changes the type of a column the principal query selects: prepared
    plans on pooled connections would fail ("cached plan must not change result type") for
    as long as those connections live."""
    if not database_url.startswith("postgresql"):
        pytest.skip("PostgreSQL only")
    http = TestClient(app, raise_server_exceptions=False)
    http.post("/auth/signup", json={"email": "ada@example.com", "password": PASSWORD}).raise_for_status()
    tokens = http.post("/auth/login", data={"username": "ada@example.com", "password": PASSWORD}).json()
    headers = {"Authorization": f"Bearer {tokens['access_token']}"}
    assert answers(http, headers, 2) == [200, 200]  # the read connections have prepared it
    admin = create_engine(database_url, isolation_level="AUTOCOMMIT")
    try:
        with admin.connect() as connection:
            connection.execute(text("ALTER TABLE users ALTER COLUMN full_name TYPE varchar(300)"))
        statuses = answers(http, headers, 3)
        for _ in range(3):
            refreshed = http.post("/auth/refresh", json={"refresh_token": tokens["refresh_token"]})
            statuses.append(refreshed.status_code)
            tokens = refreshed.json() if refreshed.status_code == 200 else tokens
        login = http.post("/auth/login", data={"username": "ada@example.com", "password": PASSWORD})
        statuses.append(login.status_code)
        assert statuses == [200] * 7
    finally:
        app.state.engine.dispose()
        with admin.connect() as connection:
            connection.execute(text("ALTER TABLE users ALTER COLUMN full_name TYPE varchar(255)"))
        admin.dispose()


def test_a_host_name_is_looked_up_off_the_event_loop(database_url: str, monkeypatch: pytest.MonkeyPatch) -> None:
    """libpq resolves a name blocking the loop (every request of the worker waits); so the
    name is looked up in the thread pool and libpq given the address. A name that does not
    resolve is a 503, not a 500."""
    if not database_url.startswith("postgresql"):
        pytest.skip("PostgreSQL only")
    slow_lookups: list[str] = []
    lookup = socket.getaddrinfo

    def slow(host: Any, *args: Any, **kwargs: Any) -> Any:
        slow_lookups.append(str(host))
        time.sleep(0.3)  # a slow DNS server
        return lookup(host, *args, **kwargs)

    monkeypatch.setattr(socket, "getaddrinfo", slow)

    async def read_while_ticking(url: Any) -> tuple[list[float], list[tuple[Any, ...]] | int]:
        engine = create_engine(url)
        reads = AsyncReads(engine, size=1, timeout=5, connect_timeout=5, prepared=True)
        gaps: list[float] = []

        async def tick() -> None:
            last = time.monotonic()
            for _ in range(8):
                await asyncio.sleep(0.05)
                gaps.append(time.monotonic() - last)
                last = time.monotonic()

        async def read() -> list[tuple[Any, ...]] | int:
            try:
                return await reads.fetch("p", "PREPARE p AS SELECT 1", "EXECUTE p", "SELECT 1", {})
            except AppError as refused:
                return refused.status_code

        try:
            _, result = await asyncio.gather(tick(), read())
        finally:
            reads.close()
            engine.dispose()
        return gaps, result

    by_name = make_url(database_url).set(host="localhost")
    gaps, rows = asyncio.run(read_while_ticking(by_name))
    assert rows == [(1,)] and "localhost" in slow_lookups
    assert max(gaps) < 0.2, gaps  # the loop went on while the name was looked up
    _, refused = asyncio.run(read_while_ticking(by_name.set(host="no-such-host.invalid")))
    assert refused == 503


def test_the_mail_sender_says_once_that_the_database_is_gone(
    through_a_proxy: Any, caplog: pytest.LogCaptureFixture
) -> None:
    """One warning for the outage and one line when it ends, not a traceback per round."""
    proxied, port, target = through_a_proxy
    settings = make_settings(proxied, outbox_poll_seconds=0.02)
    engine = make_engine(settings.database_url)
    stop = threading.Event()
    sender = threading.Thread(target=run_sender, args=(engine, settings, stop), daemon=True)
    with caplog.at_level(logging.INFO, logger="auth_service.outbox"):
        sender.start()
        time.sleep(0.5)  # about 25 rounds with nothing to reach
        with tcp_proxy(port, target):
            time.sleep(0.5)
            stop.set()  # before the proxy goes: that would be a second outage
            sender.join(timeout=5)
    engine.dispose()
    lines = [r for r in caplog.records if r.name == "auth_service.outbox"]
    assert [r.levelname for r in lines].count("WARNING") == 1 and "the database failed" in lines[0].getMessage()
    assert any("answers again" in r.getMessage() for r in lines)
    assert all(r.exc_info is None and r.levelname != "ERROR" for r in lines)


def test_a_vanished_database_host_is_noticed_in_seconds(database_url: str) -> None:
    """No answer at all (a partition) must fail a query in seconds, not the kernel's minutes."""
    if not database_url.startswith("postgresql"):
        pytest.skip("PostgreSQL only")
    engine = make_engine(database_url)
    with engine.connect() as connection:
        parameters = connection.connection.dbapi_connection.get_dsn_parameters()  # type: ignore[union-attr]
    engine.dispose()
    assert parameters["tcp_user_timeout"] == "15000" and parameters["keepalives"] == "1"


def test_readiness_is_not_fooled_by_a_killed_pooled_connection(database_url: str, client: TestClient) -> None:
    """A load balancer must not take a healthy replica out because the server dropped an idle
    connection: the check tries once more on a fresh one."""
    if not database_url.startswith("postgresql"):
        pytest.skip("PostgreSQL only")
    assert client.get("/health/ready").status_code == 200  # one idle connection in the pool
    assert kill_every_other_connection(database_url) >= 1
    assert client.get("/health/ready").status_code == 200


def test_a_database_url_setting_wins_over_our_tcp_defaults(database_url: str) -> None:
    if not database_url.startswith("postgresql"):
        pytest.skip("PostgreSQL only")
    engine = make_engine(f"{database_url}?tcp_user_timeout=0")
    with engine.connect() as connection:
        parameters = connection.connection.dbapi_connection.get_dsn_parameters()  # type: ignore[union-attr]
    engine.dispose()
    assert parameters["tcp_user_timeout"] == "0" and parameters["keepalives_idle"] == "30"
