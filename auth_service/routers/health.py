"""Liveness (the process answers) and readiness (the database answers too)."""

from fastapi import APIRouter, Request
from fastapi.responses import JSONResponse

from auth_service import __version__
from auth_service.db import database_is_ready
from auth_service.errors import ErrorCode
from auth_service.schemas import Health, Readiness

router = APIRouter(prefix="/health", tags=["health"])


@router.get("", response_model=Health)
def health() -> Health:
    """Liveness: cheap, touches nothing, for a container HEALTHCHECK."""
    return Health(status="ok", version=__version__)


@router.get(
    "/ready",
    response_model=Readiness,
    responses={503: {"model": Readiness, "description": "The database cannot be reached."}},
)
def ready(request: Request) -> Readiness | JSONResponse:
    """Readiness: 200 only when the database answers, so a load balancer can route around us."""
    if database_is_ready(request.app.state.engine):
        return Readiness(status="ok", database="ok")
    body = {
        "status": "unavailable",
        "database": "unavailable",
        "detail": "The database cannot be reached.",
        "code": ErrorCode.SERVICE_UNAVAILABLE,
    }
    return JSONResponse(body, status_code=503, headers={"Retry-After": "5"})
