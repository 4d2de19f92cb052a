"""Swagger UI (/docs) and ReDoc (/redoc) from files we serve ourselves, so the docs work
on a network with no internet access.

The files are upstream's own builds, byte for byte, vendored with their licences in
`auth_service/static/` (`scripts/update-docs-assets.sh` refreshes them). With
DOCS_ENABLED=false none of this, nor /openapi.json, exists.
"""

import re
from pathlib import Path

from fastapi import APIRouter, FastAPI, Request
from fastapi.openapi.docs import get_redoc_html, get_swagger_ui_html, get_swagger_ui_oauth2_redirect_html
from fastapi.responses import HTMLResponse
from fastapi.staticfiles import StaticFiles

from auth_service.pages import csp_hash

STATIC = Path(__file__).resolve().parent.parent / "static"
ASSETS = "/docs/assets"

router = APIRouter(include_in_schema=False)


def install(app: FastAPI) -> None:
    app.mount(ASSETS, StaticFiles(directory=STATIC), name="docs-assets")
    app.include_router(router)


def _with_csp(page: HTMLResponse) -> HTMLResponse:
    """Defence in depth: scripts only from us (FastAPI's inline one allowed by its hash), no
    images from elsewhere (ReDoc's sidebar would fetch a logo from its CDN), no framing."""
    inline = re.findall(r"<script>(.*?)</script>", bytes(page.body).decode(), re.S)
    policy = [
        "default-src 'self'",
        " ".join(["script-src 'self'", *map(csp_hash, inline)]),
        "style-src 'self' 'unsafe-inline'",  # Swagger UI and ReDoc add styles as they run
        "img-src 'self' data: blob:",  # blob: Swagger shows an image answer (the 2FA QR code) so
        "worker-src 'self' blob:",  # ReDoc's search
        "frame-ancestors 'none'",
        "base-uri 'none'",
        "form-action 'self'",
    ]
    page.headers["Content-Security-Policy"] = "; ".join(policy)
    return page


def _root(request: Request) -> str:
    """Behind a proxy that mounts us under a prefix (ASGI root_path), links need it too."""
    return str(request.scope.get("root_path", "")).rstrip("/")


@router.get("/docs")
def swagger_ui(request: Request) -> HTMLResponse:
    app: FastAPI = request.app
    root = _root(request)
    assert app.openapi_url is not None  # the docs exist only beside the spec
    redirect = app.swagger_ui_oauth2_redirect_url
    page = get_swagger_ui_html(
        openapi_url=root + app.openapi_url,
        title=f"{app.title} - Swagger UI",
        swagger_js_url=f"{root}{ASSETS}/swagger-ui/swagger-ui-bundle.js",
        swagger_css_url=f"{root}{ASSETS}/swagger-ui/swagger-ui.css",
        swagger_favicon_url=f"{root}{ASSETS}/swagger-ui/favicon-32x32.png",
        oauth2_redirect_url=root + redirect if redirect else None,
        init_oauth=app.swagger_ui_init_oauth,
        swagger_ui_parameters=app.swagger_ui_parameters,
    )
    return _with_csp(page)


@router.get("/docs/oauth2-redirect")
def swagger_ui_oauth2_redirect() -> HTMLResponse:
    """Where Swagger UI's OAuth2 flows that go through a browser redirect land."""
    return _with_csp(get_swagger_ui_oauth2_redirect_html())


@router.get("/redoc")
def redoc(request: Request) -> HTMLResponse:
    app: FastAPI = request.app
    root = _root(request)
    assert app.openapi_url is not None
    page = get_redoc_html(
        openapi_url=root + app.openapi_url,
        title=f"{app.title} - ReDoc",
        redoc_js_url=f"{root}{ASSETS}/redoc/redoc.standalone.js",
        redoc_favicon_url=f"{root}{ASSETS}/swagger-ui/favicon-32x32.png",
        with_google_fonts=False,
    )
    return _with_csp(page)
