"""ASGI middleware: request context and logging, a body-size limit, security headers."""

import logging
import re
import time
import uuid

from starlette.datastructures import Headers, MutableHeaders
from starlette.exceptions import HTTPException
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from auth_service.errors import SECURITY_HEADERS, ErrorCode, error_response
from auth_service.metrics import LATENCY, REQUESTS
from auth_service.request_context import RequestInfo, current_request
from auth_service.schemas import printable

access_log = logging.getLogger("auth_service.access")
REQUEST_ID = re.compile(r"^[A-Za-z0-9._:-]{1,128}$")
# Metrics label methods from this set only (anything else is OTHER, and answered 405 at
# once), so made-up method names cannot grow the metrics without bound.
KNOWN_METHODS = frozenset({"GET", "POST", "PUT", "PATCH", "DELETE", "HEAD", "OPTIONS"})


# Public, the same for everyone, and meant to be cached: the docs, and the keys and metadata
# other services fetch (those routes set their own Cache-Control).
CACHEABLE_PREFIXES = ("/docs", "/redoc", "/openapi.json", "/static/", "/.well-known/")


class HeadAsGetMiddleware:
    """HEAD is GET without the body (RFC 9110 §9.3.2), which link checkers and uptime
    monitors send: every GET route answers it.

    The scope is changed in place, so the route the router finds reaches the log and the
    metrics outside; it says HEAD again before the answer goes out, so the server leaves
    the body out."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or scope["method"] != "HEAD":
            await self.app(scope, receive, send)
            return

        async def send_as_head(message: Message) -> None:
            scope["method"] = "HEAD"
            await send(message)

        scope["method"] = "GET"
        try:
            await self.app(scope, receive, send_as_head)
        finally:
            scope["method"] = "HEAD"


class _TooLarge(HTTPException):
    """An HTTPException, so FastAPI's body reader lets it through to our 413 handler."""

    def __init__(self, max_bytes: int) -> None:
        super().__init__(413, f"The request body is larger than {max_bytes} bytes.")


class BodySizeLimitMiddleware:
    """413 in our error shape for bodies over `max_bytes`: by Content-Length up front, or while streaming."""

    def __init__(self, app: ASGIApp, max_bytes: int) -> None:
        self.app = app
        self.max_bytes = max_bytes

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        declared = dict(scope["headers"]).get(b"content-length")
        if declared is not None and (not declared.isdigit() or int(declared) > self.max_bytes):
            await self._reject(scope, receive, send)
            return
        received = 0
        started = False

        async def limited_receive() -> Message:
            nonlocal received
            message = await receive()
            if message["type"] == "http.request":
                received += len(message.get("body", b""))
                if received > self.max_bytes:
                    raise _TooLarge(self.max_bytes)
            return message

        async def tracking_send(message: Message) -> None:
            nonlocal started
            started = started or message["type"] == "http.response.start"
            await send(message)

        try:
            await self.app(scope, limited_receive, tracking_send)
        except _TooLarge:
            if started:
                raise
            await self._reject(scope, receive, send)

    async def _reject(self, scope: Scope, receive: Receive, send: Send) -> None:
        detail = f"The request body is larger than {self.max_bytes} bytes."
        response = error_response(413, ErrorCode.PAYLOAD_TOO_LARGE, detail, {"Connection": "close"})
        await response(scope, receive, send)


class SecurityHeadersMiddleware:
    """nosniff everywhere; no-store on all but the public, cacheable paths: answers carry tokens and user data."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        cacheable = scope["path"].startswith(CACHEABLE_PREFIXES)

        async def send_with_headers(message: Message) -> None:
            if message["type"] == "http.response.start":
                headers = MutableHeaders(scope=message)
                headers.setdefault("X-Content-Type-Options", "nosniff")
                headers.setdefault("Referrer-Policy", "no-referrer")
                if not cacheable:
                    headers["Cache-Control"] = "no-store"
            await send(message)

        await self.app(scope, receive, send_with_headers)


class RequestLogMiddleware:
    """Per request: an id (the caller's X-Request-ID if sane, else a new one, echoed back),
    the context the audit log reads, one log line, and the request metrics."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        headers = Headers(scope=scope)
        offered = headers.get("x-request-id", "")
        request_id = offered if REQUEST_ID.match(offered) else uuid.uuid4().hex
        client = scope.get("client")
        user_agent = headers.get("user-agent")
        info = RequestInfo(
            request_id,
            printable(client[0], 45) if client else None,
            printable(user_agent, 512) if user_agent else None,
        )
        context = current_request.set(info)
        status = 500
        started = time.perf_counter()

        async def send_with_id(message: Message) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = message["status"]
                MutableHeaders(scope=message)["X-Request-ID"] = request_id
            await send(message)

        method = scope["method"] if scope["method"] in KNOWN_METHODS else "OTHER"
        try:
            if method == "OTHER":
                detail = "This method is not allowed."
                response = error_response(405, ErrorCode.METHOD_NOT_ALLOWED, detail, dict(SECURITY_HEADERS))
                await response(scope, receive, send_with_id)
            else:
                await self.app(scope, receive, send_with_id)
        finally:
            elapsed = time.perf_counter() - started
            route = getattr(scope.get("route"), "path", "<unmatched>")
            REQUESTS.labels(method, route, str(status)).inc()
            LATENCY.labels(method, route).observe(elapsed)
            fields = {"method": method, "route": route, "status": status, "duration_ms": round(elapsed * 1000, 1)}
            access_log.info("%s %s %d %.1fms", method, route, status, elapsed * 1000, extra=fields)
            current_request.reset(context)
