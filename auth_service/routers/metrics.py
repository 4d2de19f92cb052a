"""Prometheus metrics at /metrics: off, open, or behind METRICS_TOKEN (METRICS setting)."""

import hmac

from fastapi import APIRouter, Request, Response

from auth_service.deps import SettingsDep
from auth_service.errors import BEARER, AppError, ErrorCode, error_responses, not_found
from auth_service.metrics import exposition
from auth_service.outbox import backlog

router = APIRouter(tags=["health"])


@router.get(
    "/metrics",
    response_class=Response,
    responses={200: {"content": {"text/plain": {}}}, **error_responses(401, 404)},
)
def metrics(request: Request, settings: SettingsDep) -> Response:
    """The Prometheus text format. With METRICS=token, send `Authorization: Bearer <METRICS_TOKEN>`."""
    mode = settings.metrics_mode
    if mode == "off":
        raise not_found()
    if mode == "token":
        assert settings.metrics_token is not None
        expected = f"Bearer {settings.metrics_token.get_secret_value()}"
        if not hmac.compare_digest(request.headers.get("authorization", "").encode(), expected.encode()):
            raise AppError(401, ErrorCode.NOT_AUTHENTICATED, "This needs the metrics token.", headers=BEARER)
    body, content_type = exposition(backlog(request.app.state.engine))
    return Response(body, media_type=content_type)
