"""Another FastAPI service of yours, trusting auth_service's tokens without its secret.

Two ways: verify the JWT locally against the published keys (fast, no call per request,
but a token stays valid until it expires, up to ACCESS_TOKEN_EXPIRE_MINUTES after a
logout), or ask introspection with the service's client credentials (one call per
request, and a logout or deactivation counts at once).
"""

from typing import Annotated, Any

import httpx
import jwt  # PyJWT, with the `crypto` extra
from fastapi import Depends, FastAPI, HTTPException
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer

Claims = dict[str, Any]


def create_app(auth_url: str, client_id: str, client_secret: str, issuer: str = "auth_service") -> FastAPI:
    # Fetches the key set once and again for a `kid` it has not seen (after a rotation).
    keys = jwt.PyJWKClient(f"{auth_url}/.well-known/jwks.json", cache_keys=True, lifespan=300)
    bearer = HTTPBearer()

    def verified(credentials: Annotated[HTTPAuthorizationCredentials, Depends(bearer)]) -> Claims:
        """Local check: signature by a published key, issuer, audience, expiry."""
        try:
            key = keys.get_signing_key_from_jwt(credentials.credentials)
            claims: Claims = jwt.decode(
                credentials.credentials,
                key,
                algorithms=["ES256", "RS256"],  # never HS*: our public key is not a secret
                issuer=issuer,
                audience="auth_service",  # JWT_AUDIENCE
                options={"require": ["exp", "iss", "aud", "sub"]},
            )
        except jwt.PyJWTError:
            raise HTTPException(401, "Invalid token.", headers={"WWW-Authenticate": "Bearer"}) from None
        return claims

    def introspected(credentials: Annotated[HTTPAuthorizationCredentials, Depends(bearer)]) -> Claims:
        """Ask auth_service (RFC 7662), as a client: revocations count at once."""
        answer = httpx.post(
            f"{auth_url}/auth/introspect",
            data={"token": credentials.credentials},
            auth=(client_id, client_secret),
            timeout=5,
        )
        answer.raise_for_status()
        claims: Claims = answer.json()
        if not claims["active"]:
            raise HTTPException(401, "Invalid token.", headers={"WWW-Authenticate": "Bearer"})
        return claims

    def needs(permission: str, check: Any = verified) -> Any:
        def allowed(claims: Annotated[Claims, Depends(check)]) -> Claims:
            if permission not in claims.get("permissions", []):
                raise HTTPException(403, f"This needs {permission}.")
            return claims

        return allowed

    app = FastAPI()

    @app.get("/invoices")
    def invoices(claims: Annotated[Claims, Depends(needs("invoices:read"))]) -> dict[str, Any]:
        return {"for": claims["sub"], "client": claims.get("client_id")}

    @app.post("/invoices/{number}/approve")
    def approve(
        number: int, claims: Annotated[Claims, Depends(needs("invoices:approve", introspected))]
    ) -> dict[str, Any]:
        return {"approved": number, "by": claims["sub"]}

    return app
