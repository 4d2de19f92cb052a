"""schemathesis against our own OpenAPI spec: generated requests, valid and not, must never
get a 5xx, and every answer must match the documented status codes, content types and
schemas. Bounded (FUZZ_EXAMPLES per operation) so the suite stays fast.

(It drives schemathesis's Hypothesis strategies directly: its pytest plugin does not run
under pytest 9.)"""

import itertools
import os
from typing import Any

import pytest
import schemathesis
from fastapi import FastAPI
from fastapi.testclient import TestClient
from hypothesis import HealthCheck, given, settings
from hypothesis.errors import Unsatisfiable
from schemathesis.checks import not_a_server_error
from schemathesis.generation import GenerationMode
from schemathesis.specs.openapi.checks import (
    content_type_conformance,
    response_schema_conformance,
    status_code_conformance,
)

from tests.conftest import Account

EXAMPLES = int(os.environ.get("FUZZ_EXAMPLES", "15"))
CHECKS = [not_a_server_error, status_code_conformance, content_type_conformance, response_schema_conformance]


@pytest.fixture
def settings_overrides() -> dict[str, Any]:
    # Generated traffic comes from one address: keep the per-IP limits out of its way.
    return {
        "signup_ip_limit": "off",
        "mail_ip_limit": "off",
        "mail_email_limit": "off",
        "introspect_ip_limit": "off",
        "login_ip_limit": "off",
    }


def test_api_conforms_and_never_fails(app: FastAPI, client: TestClient, admin: Account) -> None:
    schema = schemathesis.openapi.from_asgi("/openapi.json", app)
    headers = {"Authorization": f"Bearer {admin.access_token}"}
    operations = [result.ok() for result in schema.get_all_operations()]  # type: ignore[union-attr]
    assert len(operations) > 25
    for operation, mode in itertools.product(operations, GenerationMode):

        @given(case=operation.as_strategy(mode))
        @settings(max_examples=EXAMPLES, deadline=None, suppress_health_check=list(HealthCheck), database=None)
        def fuzz(case: Any) -> None:
            case.call_and_validate(headers=headers, checks=CHECKS)

        try:
            fuzz()
        except Unsatisfiable:  # nothing to get wrong: the operation takes no input
            assert mode is GenerationMode.NEGATIVE
