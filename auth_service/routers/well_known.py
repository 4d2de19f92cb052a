"""What other services fetch to trust us: our public keys (RFC 7517) and our metadata (RFC 8414)."""

from typing import Any

from fastapi import APIRouter, Request
from fastapi.responses import JSONResponse

from auth_service import signing_keys
from auth_service.routers.auth import GRANT_TYPES

router = APIRouter(prefix="/.well-known", tags=["discovery"])

# Verifiers cache the key set; a rotated-in key is published before it signs anything a
# verifier could see only if they refetch on an unknown `kid`, which stock clients do.
JWKS_MAX_AGE = 300


@router.get("/jwks.json", responses={200: {"description": "The JWK Set: the public keys that sign access tokens."}})
def jwks(request: Request) -> JSONResponse:
    """The public keys of the current signing key and of those rotated out whose tokens
    may still be live. Empty with an HS* JWT_ALGORITHM (a shared secret is never published)."""
    keys = (
        signing_keys.published(request.app.state.engine) if request.app.state.settings.jwt_algorithm[:2] != "HS" else []
    )
    return JSONResponse({"keys": keys}, headers={"Cache-Control": f"public, max-age={JWKS_MAX_AGE}"})


@router.get("/oauth-authorization-server", responses={200: {"description": "RFC 8414 authorization server metadata."}})
def metadata(request: Request) -> JSONResponse:
    settings = request.app.state.settings
    base = settings.public_url.rstrip("/")
    client_auth = ["client_secret_basic", "client_secret_post"]
    body: dict[str, Any] = {
        "issuer": settings.jwt_issuer,
        "token_endpoint": f"{base}/auth/login",
        "token_endpoint_auth_methods_supported": [*client_auth, "none"],
        "grant_types_supported": list(GRANT_TYPES),
        "response_types_supported": [],
        "introspection_endpoint": f"{base}/auth/introspect",
        "introspection_endpoint_auth_methods_supported": client_auth
        + ([] if settings.introspection_requires_client else ["none"]),
        "revocation_endpoint": f"{base}/auth/revoke",
        "revocation_endpoint_auth_methods_supported": [*client_auth, "none"],
        "jwks_uri": f"{base}/.well-known/jwks.json",
        "service_documentation": f"{base}/docs",
    }
    return JSONResponse(body, headers={"Cache-Control": f"public, max-age={JWKS_MAX_AGE}"})
