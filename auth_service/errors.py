"""One error shape for every answer: `{"detail": ..., "code": "UPPER_SNAKE"}`.

Domain code raises `AppError`; the handlers here turn it, FastAPI's own errors and
anything unexpected into that shape, without a trace, SQL or submitted secret.
"""

import logging
from enum import StrEnum
from typing import Any

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from sqlalchemy.exc import DBAPIError, OperationalError
from sqlalchemy.exc import TimeoutError as PoolTimeoutError
from starlette.exceptions import HTTPException as StarletteHTTPException

from auth_service.schemas import ErrorResponse

logger = logging.getLogger(__name__)


class ErrorCode(StrEnum):
    VALIDATION_ERROR = "VALIDATION_ERROR"
    WEAK_PASSWORD = "WEAK_PASSWORD"
    EMAIL_TAKEN = "EMAIL_TAKEN"
    SIGNUP_DISABLED = "SIGNUP_DISABLED"
    INVALID_CREDENTIALS = "INVALID_CREDENTIALS"
    INVALID_CLIENT = "INVALID_CLIENT"
    INACTIVE_USER = "INACTIVE_USER"
    EMAIL_NOT_VERIFIED = "EMAIL_NOT_VERIFIED"
    MFA_REQUIRED = "MFA_REQUIRED"
    MFA_ENROLLMENT_REQUIRED = "MFA_ENROLLMENT_REQUIRED"
    NOT_AUTHENTICATED = "NOT_AUTHENTICATED"
    INVALID_TOKEN = "INVALID_TOKEN"
    TOKEN_EXPIRED = "TOKEN_EXPIRED"
    PERMISSION_DENIED = "PERMISSION_DENIED"
    NOT_FOUND = "NOT_FOUND"
    METHOD_NOT_ALLOWED = "METHOD_NOT_ALLOWED"
    CONFLICT = "CONFLICT"
    PAYLOAD_TOO_LARGE = "PAYLOAD_TOO_LARGE"
    RATE_LIMITED = "RATE_LIMITED"
    SERVICE_UNAVAILABLE = "SERVICE_UNAVAILABLE"
    INTERNAL_ERROR = "INTERNAL_ERROR"


class AppError(Exception):
    """An answer to the client: status, stable code, human message.

    `oauth_error` adds the RFC 6749 §5.2 fields the token endpoint owes its clients.
    """

    def __init__(
        self,
        status_code: int,
        code: ErrorCode,
        detail: str,
        *,
        headers: dict[str, str] | None = None,
        oauth_error: str | None = None,
        extra: dict[str, Any] | None = None,
    ) -> None:
        super().__init__(detail)
        self.status_code = status_code
        self.code = code
        self.detail = detail
        self.headers = headers
        self.oauth_error = oauth_error
        self.extra = extra or {}  # more fields of the answer (the mfa_token of MFA_REQUIRED)


BEARER = {"WWW-Authenticate": "Bearer"}
# On every answer (see middleware.SecurityHeadersMiddleware): answers carry tokens and user data.
SECURITY_HEADERS = {"X-Content-Type-Options": "nosniff", "Referrer-Policy": "no-referrer", "Cache-Control": "no-store"}
BEARER_INVALID = {"WWW-Authenticate": 'Bearer error="invalid_token"'}

_CODE_BY_STATUS = {
    400: ErrorCode.VALIDATION_ERROR,
    401: ErrorCode.NOT_AUTHENTICATED,
    403: ErrorCode.PERMISSION_DENIED,
    404: ErrorCode.NOT_FOUND,
    405: ErrorCode.METHOD_NOT_ALLOWED,
    409: ErrorCode.CONFLICT,
    413: ErrorCode.PAYLOAD_TOO_LARGE,
    422: ErrorCode.VALIDATION_ERROR,
    429: ErrorCode.RATE_LIMITED,
    503: ErrorCode.SERVICE_UNAVAILABLE,
}


def error_response(
    status_code: int, code: str, detail: Any, headers: dict[str, str] | None = None, **extra: Any
) -> JSONResponse:
    return JSONResponse({"detail": detail, "code": code, **extra}, status_code=status_code, headers=headers)


def _app_error(request: Request, exc: Exception) -> JSONResponse:
    assert isinstance(exc, AppError)
    extra = {"error": exc.oauth_error, "error_description": exc.detail} if exc.oauth_error else {}
    return error_response(exc.status_code, exc.code, exc.detail, exc.headers, **extra, **exc.extra)


def _http_error(request: Request, exc: Exception) -> JSONResponse:
    assert isinstance(exc, StarletteHTTPException)
    code = _CODE_BY_STATUS.get(exc.status_code, ErrorCode.INTERNAL_ERROR)
    return error_response(exc.status_code, code, exc.detail, dict(exc.headers or {}) or None)


def public_validation_errors(errors: Any) -> list[dict[str, Any]]:
    """FastAPI's 422 list without `input` (it could be a password) and with plain-text ctx."""
    public = []
    for error in errors:
        item = {"type": error["type"], "loc": list(error["loc"]), "msg": error["msg"]}
        if error.get("ctx"):
            item["ctx"] = {key: str(value) for key, value in error["ctx"].items()}
        public.append(item)
    return public


def _validation_error(request: Request, exc: Exception) -> JSONResponse:
    assert isinstance(exc, RequestValidationError)
    return error_response(422, ErrorCode.VALIDATION_ERROR, public_validation_errors(exc.errors()))


def database_unavailable() -> AppError:
    detail = "The database is unavailable; try again shortly."
    return AppError(503, ErrorCode.SERVICE_UNAVAILABLE, detail, headers={"Retry-After": "5"})


def _database_unavailable(request: Request, exc: Exception) -> JSONResponse:
    logger.error("database unavailable: %s", type(exc).__name__)
    return _app_error(request, database_unavailable())


def _unexpected(request: Request, exc: Exception) -> JSONResponse:
    logger.error("unhandled error on %s %s", request.method, request.url.path, exc_info=exc)
    # Starlette answers this outside every middleware: the security headers come from here.
    return error_response(500, ErrorCode.INTERNAL_ERROR, "Internal server error.", dict(SECURITY_HEADERS))


def _database_error(request: Request, exc: Exception) -> JSONResponse:
    assert isinstance(exc, DBAPIError)
    if exc.connection_invalidated or isinstance(exc, OperationalError):
        return _database_unavailable(request, exc)
    return _unexpected(request, exc)


def install_error_handlers(app: FastAPI) -> None:
    app.add_exception_handler(AppError, _app_error)
    app.add_exception_handler(StarletteHTTPException, _http_error)
    app.add_exception_handler(RequestValidationError, _validation_error)
    app.add_exception_handler(DBAPIError, _database_error)
    app.add_exception_handler(PoolTimeoutError, _database_unavailable)  # every connection busy
    app.add_exception_handler(Exception, _unexpected)


def not_found(what: str = "Resource") -> AppError:
    return AppError(404, ErrorCode.NOT_FOUND, f"{what} not found.")


def email_not_verified(oauth_error: str | None = None) -> AppError:
    return AppError(403, ErrorCode.EMAIL_NOT_VERIFIED, "Verify your email address first.", oauth_error=oauth_error)


def permission_denied(detail: str = "You do not have permission to do this.") -> AppError:
    return AppError(403, ErrorCode.PERMISSION_DENIED, detail)


_DESCRIPTIONS = {
    400: "VALIDATION_ERROR: the body could not be parsed.",
    401: "Not authenticated: NOT_AUTHENTICATED, INVALID_TOKEN or TOKEN_EXPIRED.",
    403: "Forbidden: PERMISSION_DENIED, INACTIVE_USER, EMAIL_NOT_VERIFIED or SIGNUP_DISABLED.",
    404: "NOT_FOUND.",
    409: "Conflict: EMAIL_TAKEN or CONFLICT.",
    413: "PAYLOAD_TOO_LARGE.",
    422: "VALIDATION_ERROR (a list of problems) or WEAK_PASSWORD.",
    429: "RATE_LIMITED; `Retry-After` says when to try again.",
    500: "INTERNAL_ERROR: a bug; the details are in the server log.",
    503: "SERVICE_UNAVAILABLE: the database cannot be reached.",
}

# Answers any endpoint can give; each route adds its own (401, 403, 404, 409, 429).
COMMON_ERRORS = (400, 413, 422, 500, 503)


def error_responses(*statuses: int) -> dict[int | str, dict[str, Any]]:
    """OpenAPI entries documenting the error answers of an endpoint."""
    return {status: {"model": ErrorResponse, "description": _DESCRIPTIONS[status]} for status in statuses}
