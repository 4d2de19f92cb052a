"""Prometheus metrics. With several uvicorn workers, set PROMETHEUS_MULTIPROC_DIR to an
empty directory before start-up: every worker writes there and a scrape adds them up."""

import os

from prometheus_client import (
    CONTENT_TYPE_LATEST,
    REGISTRY,
    CollectorRegistry,
    Counter,
    Gauge,
    Histogram,
    generate_latest,
    multiprocess,
)

REQUESTS = Counter("auth_http_requests_total", "HTTP requests answered.", ["method", "route", "status"])
LATENCY = Histogram("auth_http_request_duration_seconds", "Time to answer an HTTP request.", ["method", "route"])
LOGINS = Counter("auth_logins_total", "Password logins by result.", ["result"])
HASH_SECONDS = Histogram(
    "auth_password_hash_seconds",
    "Time for one Argon2id hash or verification, waiting for a slot included.",
    buckets=(0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10),
)


def exposition(outbox_backlog: int) -> tuple[bytes, str]:
    """The text to serve at /metrics: this process's (or all workers') metrics, and the
    outbox backlog read from the database at scrape time."""
    if os.environ.get("PROMETHEUS_MULTIPROC_DIR"):
        registry = CollectorRegistry()
        multiprocess.MultiProcessCollector(registry)  # type: ignore[no-untyped-call]
    else:
        registry = REGISTRY
    scrape = CollectorRegistry()
    Gauge("auth_outbox_backlog", "Outbox messages not yet delivered.", registry=scrape).set(outbox_backlog)
    return generate_latest(registry) + generate_latest(scrape), CONTENT_TYPE_LATEST
