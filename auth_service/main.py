"""The application factory: `uvicorn --factory auth_service.main:create_app`."""

import logging
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

import anyio.to_thread
from fastapi import FastAPI
from fastapi.middleware.cors import CORSMiddleware
from sqlalchemy.exc import SQLAlchemyError
from sqlmodel import Session
from uvicorn.middleware.proxy_headers import ProxyHeadersMiddleware

from auth_service import __version__
from auth_service.accounts import ensure_superuser
from auth_service.config import Settings, load_settings
from auth_service.db import make_engine
from auth_service.errors import COMMON_ERRORS, error_responses, install_error_handlers
from auth_service.logs import configure_logging
from auth_service.middleware import BodySizeLimitMiddleware, RequestLogMiddleware, SecurityHeadersMiddleware
from auth_service.outbox import start_sender_thread
from auth_service.routers import audit, auth, health, metrics, roles, users

logger = logging.getLogger("auth_service")

DESCRIPTION = """
Sign up, log in, and manage users. Click **Authorize**, log in with your email as the
username, then try `GET /users/me`. Errors have one shape: `{"detail": ..., "code": ...}`.
"""


def create_app(settings: Settings | None = None) -> FastAPI:
    settings = settings or load_settings(Settings)  # a bad setting exits with one line, no traceback
    configure_logging(settings)
    engine = make_engine(settings.database_url, settings.database_pool_size, settings.database_max_overflow)

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        # Room for HASH_QUEUE_LIMIT logins waiting on a hash, and 40 threads for the rest.
        anyio.to_thread.current_default_thread_limiter().total_tokens = settings.hash_queue_limit + 40
        if settings.environment == "production" and settings.email_backend == "console":
            logger.warning("EMAIL_BACKEND=console in production: mails, with their live links, go to the log")
        if settings.email_backend == "smtp" and not settings.smtp_host:  # refused in production
            logger.warning("EMAIL_BACKEND=smtp without SMTP_HOST: no mail can be sent")
        create_first_superuser(settings, app)
        stop_sender = start_sender_thread(engine, settings) if settings.outbox_worker else None
        yield
        if stop_sender:
            stop_sender()
        engine.dispose()

    app = FastAPI(
        title="auth_service",
        version=__version__,
        description=DESCRIPTION,
        lifespan=lifespan,
        swagger_ui_parameters={"persistAuthorization": True},
        responses=error_responses(*COMMON_ERRORS),
    )
    app.state.settings = settings
    app.state.engine = engine
    install_error_handlers(app)
    app.add_middleware(SecurityHeadersMiddleware)
    app.add_middleware(BodySizeLimitMiddleware, max_bytes=settings.max_body_bytes)
    if settings.cors_origins:
        app.add_middleware(
            CORSMiddleware,
            allow_origins=settings.cors_origins,
            allow_credentials=False,
            allow_methods=["GET", "POST", "PATCH", "DELETE"],
            allow_headers=["Authorization", "Content-Type"],
        )
    app.add_middleware(RequestLogMiddleware)
    # Outermost: the client address is the proxy's unless the proxy is trusted.
    app.add_middleware(ProxyHeadersMiddleware, trusted_hosts=settings.forwarded_allow_ips or [])
    app.include_router(auth.router)
    app.include_router(users.router)
    app.include_router(roles.router)
    app.include_router(audit.router)
    app.include_router(metrics.router)
    app.include_router(health.router)
    return app


def create_first_superuser(settings: Settings, app: FastAPI) -> None:
    """FIRST_SUPERUSER_EMAIL/PASSWORD: create that account at start-up if it is missing."""
    if not (settings.first_superuser_email and settings.first_superuser_password):
        return
    try:
        with Session(app.state.engine) as session:
            user, created = ensure_superuser(
                session, settings, settings.first_superuser_email, settings.first_superuser_password.get_secret_value()
            )
    except SQLAlchemyError as exc:
        raise RuntimeError("cannot create the first superuser: is the database migrated? (make migrate)") from exc
    if created:
        logger.info("created the first superuser %s", user.email)
