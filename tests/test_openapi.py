"""The OpenAPI document a person meets in /docs: the OAuth2 password flow, errors, examples."""

from fastapi.testclient import TestClient


def test_oauth2_password_flow_points_at_the_token_endpoint(client: TestClient) -> None:
    spec = client.get("/openapi.json").json()
    [scheme] = spec["components"]["securitySchemes"].values()
    assert scheme["type"] == "oauth2" and scheme["flows"]["password"]["tokenUrl"] == "/auth/login"


def test_every_operation_documents_its_errors(client: TestClient) -> None:
    spec = client.get("/openapi.json").json()
    for path, operations in spec["paths"].items():
        for method, operation in operations.items():
            codes = set(operation["responses"])
            assert {"400", "422", "500", "503"} <= codes, (method, path)
            if operation.get("security"):
                assert "401" in codes, (method, path)
            schema = operation["responses"]["422"]["content"]["application/json"]["schema"]
            assert schema == {"$ref": "#/components/schemas/ErrorResponse"}, (method, path)


def test_examples_for_a_person_trying_it(client: TestClient) -> None:
    schemas = client.get("/openapi.json").json()["components"]["schemas"]
    assert schemas["UserCreate"]["properties"]["email"]["examples"] == ["ada@example.com"]
    assert "examples" in schemas["RoleCreate"]["properties"]["permissions"]
