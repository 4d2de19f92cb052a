"""Liveness and readiness, including a database that cannot be reached."""

from pathlib import Path

import pytest
from fastapi.testclient import TestClient

from auth_service import __version__
from auth_service.main import create_app
from tests.conftest import make_settings

UNREACHABLE_POSTGRES = "postgresql+psycopg2://nobody:hunter2-db-password@127.0.0.1:1/none"


def test_health(client: TestClient) -> None:
    live = client.get("/health")
    assert live.status_code == 200
    assert live.json() == {"status": "ok", "version": __version__}
    assert isinstance(__version__, str) and __version__
    ready = client.get("/health/ready")
    assert ready.status_code == 200
    assert ready.json() == {"status": "ok", "database": "ok"}


def test_health_needs_no_authentication_and_only_get(client: TestClient) -> None:
    assert client.get("/health", headers={"Authorization": "Bearer not-a-token"}).status_code == 200
    assert client.post("/health/ready").status_code == 405


@pytest.mark.parametrize("where", ["postgresql", "sqlite-missing-directory"])
def test_not_ready_without_a_database(where: str, tmp_path: Path) -> None:
    url = UNREACHABLE_POSTGRES if where == "postgresql" else f"sqlite:///{tmp_path / 'no-such-dir' / 'auth.db'}"
    app = create_app(make_settings(url))
    with TestClient(app) as client:
        live = client.get("/health")
        assert live.status_code == 200
        assert live.json() == {"status": "ok", "version": __version__}

        response = client.get("/health/ready")
        assert response.status_code == 503
        body = response.json()
        assert body["code"] == "SERVICE_UNAVAILABLE" and body["database"] == "unavailable"
        assert body["status"] != "ok" and body["detail"]
        assert response.headers["retry-after"]
        assert "hunter2" not in response.text and "127.0.0.1" not in response.text and "Traceback" not in response.text

        down = client.post("/auth/login", data={"username": "a@example.com", "password": "whatever password"})
        assert down.status_code == 503 and down.json()["code"] == "SERVICE_UNAVAILABLE"
        assert "hunter2" not in down.text and "OperationalError" not in down.text
    app.state.engine.dispose()
    assert not (tmp_path / "no-such-dir").exists()  # the probe did not create anything
