"""The OpenAPI document a person meets in /docs: the OAuth2 password flow, errors, examples."""

from typing import Any

import pytest
from fastapi.testclient import TestClient

from tests.conftest import PASSWORD, signup

METHODS = {"get", "put", "post", "delete", "patch", "head", "options"}


def operations(spec: dict[str, Any]) -> list[tuple[str, str, dict[str, Any]]]:
    return [
        (method, path, op) for path, ops in spec["paths"].items() for method, op in ops.items() if method in METHODS
    ]


def resolve(spec: dict[str, Any], schema: dict[str, Any]) -> dict[str, Any]:
    while "$ref" in schema:
        name = schema["$ref"].removeprefix("#/components/schemas/")
        schema = spec["components"]["schemas"][name]
    return schema


@pytest.fixture
def spec(client: TestClient) -> dict[str, Any]:
    response = client.get("/openapi.json")
    assert response.status_code == 200
    body: dict[str, Any] = response.json()
    return body


def test_every_reference_resolves(spec: dict[str, Any]) -> None:
    """ReDoc and client generators choke on a $ref to a schema the document does not hold."""

    def references(node: Any) -> list[str]:
        if isinstance(node, dict):
            own = [node["$ref"]] if isinstance(node.get("$ref"), str) else []
            return own + [ref for value in node.values() for ref in references(value)]
        if isinstance(node, list):
            return [ref for value in node for ref in references(value)]
        return []

    found = references(spec)
    assert found
    schemas = spec["components"]["schemas"]
    assert [ref for ref in found if ref.removeprefix("#/components/schemas/") not in schemas] == []


def test_oauth2_password_flow_points_at_the_token_endpoint(spec: dict[str, Any]) -> None:
    [scheme] = spec["components"]["securitySchemes"].values()
    assert scheme["type"] == "oauth2" and scheme["flows"]["password"]["tokenUrl"] == "/auth/login"
    # Swagger's Authorize button posts a form to it, and the endpoint takes one
    login = spec["paths"]["/auth/login"]["post"]
    assert "application/x-www-form-urlencoded" in login["requestBody"]["content"]


def test_protected_operations_use_the_scheme(spec: dict[str, Any]) -> None:
    [name] = spec["components"]["securitySchemes"]
    assert spec["paths"]["/users/me"]["get"]["security"] == [{name: []}]
    assert "security" not in spec["paths"]["/auth/signup"]["post"]
    assert "security" not in spec["paths"]["/health"]["get"]


def test_every_operation_documents_its_errors(spec: dict[str, Any]) -> None:
    assert len(operations(spec)) > 20
    for method, path, operation in operations(spec):
        codes = set(operation["responses"])
        assert {"400", "422", "500", "503"} <= codes, (method, path)
        if not path.startswith("/health"):
            others = {code for code in codes if code.startswith("4") and code != "422"}
            assert others, (method, path, codes)
        if operation.get("security"):
            assert "401" in codes, (method, path)
        if "{" in path:
            assert "404" in codes, (method, path)
        for code in codes - {"200", "201", "202", "204"}:
            assert operation["responses"][code].get("description"), (method, path, code)
        schema = operation["responses"]["422"]["content"]["application/json"]["schema"]
        assert schema == {"$ref": "#/components/schemas/ErrorResponse"}, (method, path)


def test_the_error_shape_is_documented(spec: dict[str, Any]) -> None:
    error = spec["components"]["schemas"]["ErrorResponse"]
    assert {"detail", "code"} <= set(error["properties"])
    assert {"detail", "code"} <= set(error.get("required", []))


def test_examples_for_a_person_trying_it(spec: dict[str, Any]) -> None:
    body = spec["paths"]["/auth/signup"]["post"]["requestBody"]
    assert body["required"] is True
    schema = resolve(spec, body["content"]["application/json"]["schema"])
    assert schema["properties"]["email"]["examples"] == ["ada@example.com"]
    assert schema["properties"]["password"]["examples"]
    assert "examples" in spec["components"]["schemas"]["RoleCreate"]["properties"]["permissions"]


def test_the_signup_example_works_as_is(client: TestClient, spec: dict[str, Any]) -> None:
    """Swagger's "Try it out" fills the examples in: they must make a valid request."""
    schema = resolve(
        spec, spec["paths"]["/auth/signup"]["post"]["requestBody"]["content"]["application/json"]["schema"]
    )
    example = {name: prop["examples"][0] for name, prop in schema["properties"].items() if prop.get("examples")}
    response = client.post("/auth/signup", json=example)
    assert response.status_code == 201, response.text


@pytest.mark.parametrize("settings_overrides", [{"login_max_failures": 1}])
def test_the_login_throttle_is_documented(client: TestClient, spec: dict[str, Any]) -> None:
    signup(client, "ada@example.com")
    client.post("/auth/login", data={"username": "ada@example.com", "password": "wrong password"})
    locked = client.post("/auth/login", data={"username": "ada@example.com", "password": PASSWORD})
    assert locked.status_code == 429 and locked.json()["code"] == "RATE_LIMITED"
    assert "429" in spec["paths"]["/auth/login"]["post"]["responses"]


@pytest.mark.parametrize("settings_overrides", [{"metrics": "token", "metrics_token": "m" * 32}])
def test_the_metrics_errors_are_documented(client: TestClient, spec: dict[str, Any]) -> None:
    assert client.get("/metrics").status_code == 401
    assert client.get("/metrics", headers={"Authorization": f"Bearer {'m' * 32}"}).status_code == 200
    responses = spec["paths"]["/metrics"]["get"]["responses"]
    assert "401" in responses and "404" in responses
