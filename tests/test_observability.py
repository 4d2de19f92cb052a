"""Request ids, one log line per request (text or JSON, no secrets), and /metrics."""

import json
import logging
from typing import Any

import pytest
from fastapi.testclient import TestClient
from prometheus_client.parser import text_string_to_metric_families

from auth_service.config import Settings
from auth_service.logs import JsonFormatter, RequestIdFilter, configure_logging
from auth_service.main import create_app
from tests.conftest import PASSWORD, TEST_SECRET, make_settings, register


def test_request_id_is_taken_or_made_and_returned(client: TestClient) -> None:
    assert client.get("/health", headers={"X-Request-ID": "abc-123"}).headers["x-request-id"] == "abc-123"
    made = client.get("/health").headers["x-request-id"]
    assert len(made) == 32
    hostile = client.get("/health", headers={"X-Request-ID": "x" * 500}).headers["x-request-id"]
    assert hostile != "x" * 500


def test_one_log_line_per_request_with_route_template(client: TestClient, caplog: pytest.LogCaptureFixture) -> None:
    user = register(client, "ada@example.com")
    caplog.clear()
    with caplog.at_level(logging.INFO, logger="auth_service.access"):
        client.get(f"/users/{user.id}", headers={**user.headers, "X-Request-ID": "req-1"})
    [line] = [r for r in caplog.records if r.name == "auth_service.access"]
    fields = line.__dict__
    assert fields["route"] == "/users/{user_id}"
    assert fields["status"] == 200 and fields["method"] == "GET"
    assert isinstance(fields["duration_ms"], float)
    assert user.id not in line.getMessage()  # the template, not the path


def test_json_log_format() -> None:
    record = logging.LogRecord("auth_service.access", logging.INFO, __file__, 1, "GET %s", ("/health",), None)
    record.route, record.status = "/health", 200
    RequestIdFilter().filter(record)
    entry = json.loads(JsonFormatter().format(record))
    assert entry["message"] == "GET /health" and entry["route"] == "/health" and entry["status"] == 200
    assert entry["level"] == "INFO" and "request_id" in entry


def test_no_secret_reaches_the_logs(client: TestClient, caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.DEBUG)
    user = register(client, "ada@example.com")
    refreshed = client.post("/auth/refresh", json={"refresh_token": user.refresh_token}).json()
    client.post("/auth/login", data={"username": "ada@example.com", "password": "wrong but secret"})
    client.post(
        "/users/me/password",
        json={"current_password": PASSWORD, "new_password": "the next long password"},
        headers={"Authorization": f"Bearer {refreshed['access_token']}"},
    )
    client.post("/auth/password-reset/request", json={"email": "ada@example.com"})
    text = "\n".join(r.getMessage() + json.dumps(r.__dict__, default=str) for r in caplog.records)
    secrets = [PASSWORD, "wrong but secret", "the next long password", user.access_token, user.refresh_token]
    secrets += [refreshed["access_token"], refreshed["refresh_token"], "$argon2id$"]
    for secret in secrets:
        assert secret not in text


def test_configure_logging_json(capsys: pytest.CaptureFixture[str]) -> None:
    configure_logging(make_settings("sqlite://", log_format="json"))
    logging.getLogger("auth_service.test").warning("hello")
    line = capsys.readouterr().err.strip().splitlines()[-1]
    assert json.loads(line)["message"] == "hello"
    configure_logging(make_settings("sqlite://"))


def scrape(client: TestClient, **headers: str) -> dict[str, Any]:
    response = client.get("/metrics", headers=headers)
    assert response.status_code == 200, response.text
    assert response.headers["content-type"].startswith("text/plain")
    samples: dict[str, Any] = {}
    for family in text_string_to_metric_families(response.text):
        for sample in family.samples:
            samples[sample.name + json.dumps(sample.labels, sort_keys=True)] = sample.value
    return samples


def value(samples: dict[str, Any], name: str, **labels: str) -> float:
    return float(samples.get(name + json.dumps(labels, sort_keys=True), 0))


def test_metrics_count_requests_and_logins(client: TestClient) -> None:
    before = scrape(client)
    register(client, "ada@example.com")
    client.post("/auth/login", data={"username": "ada@example.com", "password": "wrong password"})
    after = scrape(client)
    assert (
        value(after, "auth_logins_total", result="succeeded")
        == value(before, "auth_logins_total", result="succeeded") + 1
    )
    assert value(after, "auth_logins_total", result="failed") == value(before, "auth_logins_total", result="failed") + 1
    signup = {"method": "POST", "route": "/auth/signup", "status": "201"}
    assert value(after, "auth_http_requests_total", **signup) == value(before, "auth_http_requests_total", **signup) + 1
    assert value(after, "auth_password_hash_seconds_count") > value(before, "auth_password_hash_seconds_count")
    assert value(after, "auth_outbox_backlog") >= 1  # the verification mail waits (no sender in tests)
    assert value(after, "auth_http_request_duration_seconds_count", method="POST", route="/auth/login") >= 2


def test_metrics_off_and_token(database_url: str) -> None:
    off = create_app(make_settings(database_url, metrics="off"))
    with TestClient(off) as client:
        assert client.get("/metrics").status_code == 404
    guarded = create_app(make_settings(database_url, metrics="token", metrics_token="scrape-me"))
    with TestClient(guarded) as client:
        assert client.get("/metrics").status_code == 401
        assert client.get("/metrics", headers={"Authorization": "Bearer nope"}).status_code == 401
        assert client.get("/metrics", headers={"Authorization": "Bearer scrape-me"}).status_code == 200


def test_metrics_default_by_environment(database_url: str) -> None:
    assert make_settings(database_url).metrics_mode == "open"
    production = Settings(environment="production", database_url=database_url, secret_key=TEST_SECRET, _env_file=None)
    assert production.metrics_mode == "off"
    with pytest.raises(ValueError, match="METRICS_TOKEN"):
        make_settings(database_url, metrics="token")
