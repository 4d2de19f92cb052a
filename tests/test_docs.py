"""/docs and /redoc work offline: they load only our own copies of Swagger UI and ReDoc,
which we serve; the OAuth2 Authorize flow stays wired; DOCS_ENABLED=false removes it all."""

import base64
import hashlib
import re

import pytest
from fastapi.testclient import TestClient

ASSET_URL = re.compile(r"""(?:src|href)=["']?([^"'\s>]+)""")


def referenced_assets(html: str) -> list[str]:
    return ASSET_URL.findall(html)


@pytest.mark.parametrize("path", ["/docs", "/redoc"])
def test_docs_pages_load_only_local_assets_and_those_are_served(client: TestClient, path: str) -> None:
    page = client.get(path)
    assert page.status_code == 200 and page.headers["content-type"].startswith("text/html")
    assert not re.search(r"https?://|//cdn|googleapis", page.text), page.text
    assets = referenced_assets(page.text)
    assert assets and all(url.startswith("/docs/assets/") for url in assets), assets
    types = {".js": "text/javascript", ".css": "text/css", ".png": "image/png"}
    for url in assets:
        asset = client.get(url)
        assert asset.status_code == 200, url
        assert asset.headers["content-type"].startswith(types[url[url.rindex(".") :]]), url
        assert asset.headers["x-content-type-options"] == "nosniff"
        assert "no-store" not in asset.headers.get("cache-control", "")  # cacheable, unlike API answers


@pytest.mark.parametrize("path", ["/docs", "/redoc", "/docs/oauth2-redirect"])
def test_docs_pages_allow_only_our_scripts_and_images(client: TestClient, path: str) -> None:
    page = client.get(path)
    policy = dict(part.strip().split(" ", 1) for part in page.headers["content-security-policy"].split(";"))
    assert policy["default-src"] == "'self'" and policy["frame-ancestors"] == "'none'"
    assert policy["img-src"] == "'self' data: blob:"  # ReDoc's sidebar logo would come from its CDN
    inline = re.findall(r"<script>(.*?)</script>", page.text, re.S)
    hashes = [f"'sha256-{base64.b64encode(hashlib.sha256(s.encode()).digest()).decode()}'" for s in inline]
    assert policy["script-src"].split() == ["'self'", *hashes]
    assert "unsafe" not in policy["script-src"]


def test_swagger_ui_keeps_authorization_and_the_oauth2_redirect(client: TestClient) -> None:
    page = client.get("/docs").text
    assert '"persistAuthorization": true' in page
    assert "oauth2RedirectUrl: window.location.origin + '/docs/oauth2-redirect'" in page
    assert client.get("/docs/oauth2-redirect").status_code == 200
    assert client.get("/openapi.json").json()["components"]["securitySchemes"]


def test_the_vendored_files_ship_with_their_licences(client: TestClient) -> None:
    for path in ["swagger-ui/LICENSE", "swagger-ui/NOTICE", "redoc/LICENSE"]:
        assert client.get(f"/docs/assets/{path}").status_code == 200, path
    assert client.get("/docs/assets/../config.py").status_code == 404
    assert client.get("/docs/assets/nope.js").status_code == 404


@pytest.mark.parametrize("settings_overrides", [{"docs_enabled": False}])
def test_docs_disabled_means_no_docs_and_no_spec(client: TestClient) -> None:
    for path in ["/docs", "/redoc", "/openapi.json", "/docs/oauth2-redirect", "/docs/assets/swagger-ui/swagger-ui.css"]:
        response = client.get(path)
        assert response.status_code == 404, path
        assert response.json()["code"] == "NOT_FOUND"
    assert client.get("/health").status_code == 200
