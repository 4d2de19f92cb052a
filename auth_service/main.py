"""The application factory: `uvicorn --factory auth_service.main:create_app`."""

import gc
import logging
import sys
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from functools import cache

import anyio.to_thread
from fastapi import FastAPI
from fastapi.middleware.cors import CORSMiddleware
from sqlalchemy.exc import SQLAlchemyError
from uvicorn.middleware.proxy_headers import ProxyHeadersMiddleware

from auth_service import __version__, signing_keys
from auth_service.accounts import create_superuser, find_user_by_email
from auth_service.async_reads import AsyncReads
from auth_service.config import Settings, load_settings
from auth_service.db import CONNECT_TIMEOUT_SECONDS, make_engine, new_session
from auth_service.errors import COMMON_ERRORS, error_responses, install_error_handlers
from auth_service.logs import configure_logging
from auth_service.middleware import (
    BodySizeLimitMiddleware,
    HeadAsGetMiddleware,
    RequestLogMiddleware,
    SecurityHeadersMiddleware,
)
from auth_service.outbox import start_sender_thread
from auth_service.password_policy import password_problems
from auth_service.routers import audit, auth, clients, docs, health, metrics, mfa, pages, roles, users, well_known
from auth_service.schemas import normalize_email

logger = logging.getLogger("auth_service")

DESCRIPTION = """
Sign up, log in, and manage users. Click **Authorize**, log in with your email as the
username, then try `GET /users/me`. Errors have one shape: `{"detail": ..., "code": ...}`.
"""


@cache
def settle_the_collector() -> None:
    """What the first start-up made (modules, the app) lives as long as the process: out of
    the collector's way, and fewer, larger young collections, so a full collection rarely
    stalls a request. Once per process: freezing again would keep every later app (tests
    make hundreds) for ever, and unfreezing would put it all back in every collection."""
    gc.collect()
    gc.freeze()
    gc.set_threshold(10_000, 20, 20)


def create_app(settings: Settings | None = None) -> FastAPI:
    settings = settings or load_settings(Settings)  # a bad setting exits with one line, no traceback
    configure_logging(settings)
    engine = make_engine(settings.database_url, settings.database_pool_size, settings.database_max_overflow)

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        # Threads busy with a login's queries hand the interpreter back after 2 ms, not 5: the
        # event loop (every other request) waits that much less behind them.
        sys.setswitchinterval(0.002)
        settle_the_collector()
        # Room for HASH_QUEUE_LIMIT logins waiting on a hash, and 40 threads for the rest.
        anyio.to_thread.current_default_thread_limiter().total_tokens = settings.hash_queue + 40
        for warning in settings.warnings():
            logger.warning("%s", warning)
        create_first_superuser(settings, app)
        try:
            signing_keys.ensure_current(engine, settings)
        except SQLAlchemyError:  # the database is down: made on first use instead
            logger.warning("could not check the signing key at start-up: the database is unavailable")
        stop_sender = start_sender_thread(engine, settings) if settings.outbox_worker else None
        yield
        if stop_sender:
            stop_sender()
        if app.state.reads is not None:
            app.state.reads.close()
        engine.dispose()

    app = FastAPI(
        title=settings.product_name,
        version=__version__,
        description=DESCRIPTION,
        lifespan=lifespan,
        # Our own /docs and /redoc (routers/docs.py) serve Swagger UI and ReDoc without a CDN.
        docs_url=None,
        redoc_url=None,
        openapi_url="/openapi.json" if settings.docs_enabled else None,
        swagger_ui_oauth2_redirect_url="/docs/oauth2-redirect",
        swagger_ui_parameters={"persistAuthorization": True},
        responses=error_responses(*COMMON_ERRORS),
    )
    app.state.settings = settings
    app.state.engine = engine
    app.state.reads = (  # PostgreSQL: each request's principal read, on the event loop
        AsyncReads(
            engine,
            size=settings.database_read_connections,
            timeout=settings.database_read_timeout_seconds,
            connect_timeout=CONNECT_TIMEOUT_SECONDS,
            prepared=settings.database_prepared_statements,
        )
        if engine.dialect.name == "postgresql"
        else None
    )
    install_error_handlers(app)
    app.add_middleware(HeadAsGetMiddleware)  # innermost: the log and metrics still say HEAD
    app.add_middleware(BodySizeLimitMiddleware, max_bytes=settings.max_body_bytes)
    app.add_middleware(SecurityHeadersMiddleware)  # outside the body limit: its 413 gets the headers too
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
    app.include_router(mfa.router)
    app.include_router(roles.router)
    app.include_router(audit.router)
    app.include_router(metrics.router)
    app.include_router(health.router)
    app.include_router(pages.router)
    app.include_router(clients.router)
    app.include_router(well_known.router)
    if settings.docs_enabled:
        docs.install(app)
    return app


def create_first_superuser(settings: Settings, app: FastAPI) -> None:
    """FIRST_SUPERUSER_EMAIL/PASSWORD: create that account at start-up if it is missing.

    An existing account with that address is never promoted: whoever signed up with it
    first would become superuser with their own password. It is left alone, with an error
    in the log saying what to do.
    """
    if not (settings.first_superuser_email and settings.first_superuser_password):
        return
    password = settings.first_superuser_password.get_secret_value()
    problems = password_problems(settings, password, settings.first_superuser_email)
    try:
        with new_session(app.state.engine) as session:
            if problems and find_user_by_email(session, normalize_email(settings.first_superuser_email)) is None:
                # Only when it would be used: an old password left in the environment of a
                # deployment whose superuser exists must not stop it from starting.
                logger.error("FIRST_SUPERUSER_PASSWORD is refused, so no superuser was created: %s", " ".join(problems))
                return
            created = create_superuser(session, settings, settings.first_superuser_email, password)
            existing = None if created else find_user_by_email(session, normalize_email(settings.first_superuser_email))
    except SQLAlchemyError as exc:
        raise RuntimeError("cannot create the first superuser: is the database migrated? (make migrate)") from exc
    if created:
        logger.info("created the first superuser %s", created.email)
    elif existing is not None and not existing.is_superuser:
        logger.error(
            "FIRST_SUPERUSER_EMAIL %s belongs to an ordinary account, which was NOT made superuser. If it is yours, "
            "run: python -m auth_service create-admin --email %s --promote-existing",
            existing.email,
            existing.email,
        )
