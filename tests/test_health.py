"""Liveness and readiness, including a database that cannot be reached."""

import pytest
from fastapi.testclient import TestClient

from auth_service import __version__
from auth_service.main import create_app
from tests.conftest import make_settings


def test_health(client: TestClient) -> None:
    assert client.get("/health").json() == {"status": "ok", "version": __version__}
    assert client.get("/health/ready").json() == {"status": "ok", "database": "ok"}


@pytest.mark.parametrize(
    "url", ["postgresql+psycopg2://nobody@127.0.0.1:1/none", "sqlite:////nonexistent-directory/auth.db"]
)
def test_not_ready_without_a_database(url: str) -> None:
    with TestClient(create_app(make_settings(url))) as client:
        assert client.get("/health").status_code == 200
        response = client.get("/health/ready")
        assert response.status_code == 503
        assert response.json()["code"] == "SERVICE_UNAVAILABLE" and response.json()["database"] == "unavailable"
        assert response.headers["retry-after"]
        down = client.post("/auth/login", data={"username": "a@example.com", "password": "whatever password"})
        assert down.status_code == 503 and down.json()["code"] == "SERVICE_UNAVAILABLE"
