"""Fixtures: every test that takes `client` runs on SQLite and, when TEST_DATABASE_URL is
set, on PostgreSQL too, each in a database made for this run and dropped after it.

TEST_DATABASE_URL names a PostgreSQL server (any database on it we may connect to); if
it is set and cannot be reached, the run fails: CI must never skip PostgreSQL quietly.
"""

import os
import re
import socket
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import pytest
import uvicorn
from alembic import command
from alembic.config import Config
from fastapi import FastAPI
from fastapi.testclient import TestClient
from jose import jwt
from sqlalchemy import Engine, create_engine, text
from sqlmodel import Session, col, select

from auth_service import signing_keys
from auth_service.accounts import create_superuser
from auth_service.config import Settings, with_our_postgres_driver
from auth_service.db import new_session
from auth_service.emails import MAIL
from auth_service.main import create_app
from auth_service.models import OutboxMessage, Role, metadata
from auth_service.permissions import BUILTIN_PERMISSIONS
from tests.support import (
    TEST_SECRET,
    Workers,
    free_port,
    fresh_postgres_database,
    service_env,
    wait_until_healthy,
    watch_for_second_connections,
)

__all__ = ["TEST_SECRET", "free_port", "service_env", "wait_until_healthy"]

ROOT = Path(__file__).resolve().parent.parent
PASSWORD = "correct horse battery staple"
ADMIN_EMAIL = "admin@example.com"
ADMIN_PASSWORD = "admin password for tests"
BACKENDS = ["sqlite", "postgresql"] if os.environ.get("TEST_DATABASE_URL") else ["sqlite"]


def alembic_config(url: str) -> Config:
    config = Config(str(ROOT / "alembic.ini"))
    config.set_main_option("script_location", str(ROOT / "migrations"))
    config.set_main_option("sqlalchemy.url", url.replace("%", "%%"))
    return config


@pytest.fixture(scope="session")
def postgres_server_url() -> Iterator[str]:
    url = with_our_postgres_driver(os.environ["TEST_DATABASE_URL"])
    engine = create_engine(url, isolation_level="AUTOCOMMIT", connect_args={"connect_timeout": 5})
    try:
        with engine.connect() as connection:
            connection.execute(text("SELECT 1"))
    except Exception as exc:  # fail, never skip: CI must test PostgreSQL
        pytest.fail(f"TEST_DATABASE_URL is set but PostgreSQL cannot be reached: {type(exc).__name__}: {exc}")
    finally:
        engine.dispose()
    yield url


@pytest.fixture(scope="session", params=BACKENDS)
def database_url(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """A fresh, migrated database for this run, dropped at the end."""
    if request.param == "sqlite":
        url = f"sqlite:///{tmp_path_factory.mktemp('sqlite') / 'auth.db'}"
        command.upgrade(alembic_config(url), "head")
        yield url
        return
    with fresh_postgres_database(request.getfixturevalue("postgres_server_url"), "auth_test") as url:
        command.upgrade(alembic_config(url), "head")
        yield url


def make_settings(database_url: str, **overrides: Any) -> Settings:
    """Real Argon2id with cheap parameters, so the suite stays fast."""
    values: dict[str, Any] = {
        "environment": "test",
        "database_url": database_url,
        "secret_key": TEST_SECRET,
        "argon2_time_cost": 1,
        "argon2_memory_cost": 1024,
        "argon2_parallelism": 1,
        "hash_concurrency": 2,  # the same bounds on any machine
        "hash_queue_limit": 64,  # races in the tests send dozens of logins at once
        "outbox_worker": False,  # tests deliver with outbox.deliver_due, or turn it on
        "_env_file": None,
    }
    values.update(overrides)
    return Settings(**values)


def clear_database(engine: Engine) -> None:
    """Empty every table, then put back what the migrations seed (the admin role)."""
    with engine.begin() as connection:
        for table in reversed(metadata.sorted_tables):
            connection.execute(table.delete())
    with Session(engine) as session:
        session.add(Role(name="admin", description="Every built-in permission.", permissions=list(BUILTIN_PERMISSIONS)))
        session.commit()


@pytest.fixture
def settings_overrides() -> dict[str, Any]:
    """Override in a test module (or with indirect parametrisation) to change settings."""
    return {}


@pytest.fixture
def settings(database_url: str, settings_overrides: dict[str, Any]) -> Settings:
    return make_settings(database_url, **settings_overrides)


@pytest.fixture
def app(settings: Settings) -> Iterator[FastAPI]:
    app = create_app(settings)
    clear_database(app.state.engine)
    second_connections = watch_for_second_connections(app)
    yield app
    app.state.engine.dispose()
    assert second_connections.found == [], "a request waited for a second pooled connection while holding one"


@pytest.fixture
def client(app: FastAPI) -> Iterator[TestClient]:
    with TestClient(app) as client:
        yield client


@pytest.fixture
def db(app: FastAPI) -> Iterator[Session]:
    """A database session beside the app's, to set up or inspect state directly."""
    with Session(app.state.engine) as session:
        yield session


# --- helpers -------------------------------------------------------------------------


@dataclass
class Account:
    email: str
    password: str
    id: str
    access_token: str
    refresh_token: str

    @property
    def headers(self) -> dict[str, str]:
        return {"Authorization": f"Bearer {self.access_token}"}


def signup(client: TestClient, email: str, password: str = PASSWORD, **extra: Any) -> dict[str, Any]:
    response = client.post("/auth/signup", json={"email": email, "password": password, **extra})
    assert response.status_code == 201, response.text
    body: dict[str, Any] = response.json()
    return body


def login(client: TestClient, email: str, password: str = PASSWORD) -> dict[str, Any]:
    response = client.post("/auth/login", data={"username": email, "password": password})
    assert response.status_code == 200, response.text
    body: dict[str, Any] = response.json()
    return body


def error(response: httpx.Response, status: int, code: str, case: object = None) -> dict[str, Any]:
    """The one error shape: exactly `detail` and `code` (`case` names the input in a failure)."""
    assert response.status_code == status, (case, response.text)
    body: dict[str, Any] = response.json()
    assert set(body) == {"detail", "code"} and body["code"] == code, (case, body)
    return body


def register(client: TestClient, email: str = "ada@example.com", password: str = PASSWORD) -> Account:
    """Sign up and log in: an account with live tokens."""
    user = signup(client, email, password)
    tokens = login(client, email, password)
    return Account(email, password, user["id"], tokens["access_token"], tokens["refresh_token"])


@pytest.fixture
def user(client: TestClient) -> Account:
    return register(client)


@pytest.fixture
def admin(client: TestClient, app: FastAPI, settings: Settings) -> Account:
    with Session(app.state.engine) as session:
        created = create_superuser(session, settings, ADMIN_EMAIL, ADMIN_PASSWORD)
        assert created is not None
        user_id = str(created.id)
    tokens = login(client, ADMIN_EMAIL, ADMIN_PASSWORD)
    return Account(ADMIN_EMAIL, ADMIN_PASSWORD, user_id, tokens["access_token"], tokens["refresh_token"])


def service(client: TestClient, admin: Account, permissions: list[str] | None = None) -> tuple[str, str]:
    """A new service client's (client_id, client_secret), for HTTP Basic: `auth=service(...)`."""
    body = {"name": "a service", "permissions": permissions or []}
    created = client.post("/clients", json=body, headers=admin.headers)
    assert created.status_code == 201, created.text
    return created.json()["client_id"], created.json()["client_secret"]


def sign_as_the_service(app: FastAPI, claims: dict[str, Any]) -> str:
    """A JWT over any claims, signed with the service's current key: a forger's best case."""
    with new_session(app.state.engine) as session:
        signer = signing_keys.signer(session, app.state.settings)
    token: str = jwt.encode(
        claims, signer.key, algorithm=signer.algorithm, headers={"kid": signer.kid} if signer.kid else None
    )
    return token


# --- a real server, for real HTTP clients ---------------------------------------------


@pytest.fixture
def workers(database_url: str, client: TestClient) -> Iterator[Workers]:
    """Two uvicorn processes on the test database, to start with `.start()` (the `client`
    fixture emptied it first)."""
    workers = Workers(database_url)
    yield workers
    workers.stop()


@dataclass
class LiveServer:
    url: str
    app: FastAPI


@pytest.fixture
def live_server(app: FastAPI) -> Iterator[LiveServer]:
    """The app under uvicorn on a free loopback port, in a thread."""
    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    port = sock.getsockname()[1]
    # As the Makefile runs it: the app, not uvicorn, decides which proxies to trust; h11
    # passes any method on to the app.
    config = uvicorn.Config(app, log_level="warning", lifespan="on", proxy_headers=False, access_log=False, http="h11")
    server = uvicorn.Server(config)
    thread = threading.Thread(target=server.run, kwargs={"sockets": [sock]}, daemon=True)
    thread.start()
    deadline = time.monotonic() + 10
    while not server.started:
        if time.monotonic() > deadline:
            raise RuntimeError("uvicorn did not start")
        time.sleep(0.01)
    yield LiveServer(f"http://127.0.0.1:{port}", app)
    server.should_exit = True
    thread.join(timeout=10)
    sock.close()


# --- mail in the outbox ----------------------------------------------------------------


def queued_mails(app: FastAPI, to: str) -> list[dict[str, Any]]:
    """The mails to one address waiting in the outbox (not yet delivered), oldest first."""
    with Session(app.state.engine) as session:
        rows = session.exec(
            select(OutboxMessage).where(col(OutboxMessage.kind) == MAIL).order_by(col(OutboxMessage.created_at))
        ).all()
    return [row.payload for row in rows if row.payload["to"] == to]


def mailed_token(mail: dict[str, Any]) -> str:
    """The token of the link in a mail's text."""
    match = re.search(r"token=([A-Za-z0-9_-]+)", mail["text"])
    assert match, mail["text"]
    return match.group(1)
