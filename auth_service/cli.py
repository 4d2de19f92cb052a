"""`python -m auth_service COMMAND`: the few jobs an operator runs by hand or from cron."""

import argparse
import contextlib
import getpass
import logging
import os
import signal
import sys
import threading
from pathlib import Path

from alembic import command
from alembic.config import Config
from sqlalchemy import create_engine, text
from sqlalchemy.exc import SQLAlchemyError
from sqlalchemy.pool import NullPool
from sqlmodel import Session, col, select

from auth_service import one_time_tokens, throttle
from auth_service.accounts import ensure_superuser, find_user_by_email
from auth_service.audit import prune_events
from auth_service.config import Settings, load_settings
from auth_service.db import (
    DatabaseUnavailable,
    database_address,
    describe_database_error,
    make_engine,
    wait_for_database,
)
from auth_service.logs import configure_logging
from auth_service.models import Role, UserRole
from auth_service.outbox import deliver_due, prune_delivered, run_sender
from auth_service.password_policy import password_problems
from auth_service.schemas import normalize_email
from auth_service.sessions import prune_sessions

ADMIN_PASSWORD_ENV = "ADMIN_PASSWORD"
ALEMBIC_INI = Path(__file__).resolve().parent.parent / "alembic.ini"
MIGRATE_LOCK_KEY = 0x6D696772  # any constant: the PostgreSQL advisory lock held while migrating

logger = logging.getLogger("auth_service.migrate")


def _admin_password(args: argparse.Namespace) -> str:
    if args.password:
        return str(args.password)
    if os.environ.get(ADMIN_PASSWORD_ENV):
        return os.environ[ADMIN_PASSWORD_ENV]
    if not sys.stdin.isatty():
        raise SystemExit(f"no password: pass --password, set {ADMIN_PASSWORD_ENV}, or run in a terminal")
    password = getpass.getpass("Password: ")
    if password != getpass.getpass("Password (again): "):
        raise SystemExit("the passwords differ")
    return password


def create_admin(settings: Settings, args: argparse.Namespace) -> int:
    """Create a superuser, or make an existing account one."""
    password = _admin_password(args)
    problems = password_problems(settings, password, args.email)
    if problems:
        raise SystemExit(" ".join(problems))
    with Session(make_engine(settings.database_url)) as session:
        user, created = ensure_superuser(session, settings, args.email, password)
    print(f"{'created' if created else 'made superuser'}: {user.email} ({user.id})")
    return 0


def grant_role(settings: Settings, args: argparse.Namespace) -> int:
    """Give a user a role, for the first setup (no permission check: you own the database)."""
    with Session(make_engine(settings.database_url)) as session:
        user = find_user_by_email(session, normalize_email(args.email))
        if user is None:
            raise SystemExit(f"no user with the email {args.email}")
        role = session.exec(select(Role).where(col(Role.name) == args.role)).first()
        if role is None:
            raise SystemExit(f"no role named {args.role}")
        if session.get(UserRole, (user.id, role.id)) is None:
            session.add(UserRole(user_id=user.id, role_id=role.id))
            session.commit()
    print(f"{args.email}: holds role {args.role}")
    return 0


def send_mail(settings: Settings, args: argparse.Namespace) -> int:
    """Deliver the outbox from a separate process (set OUTBOX_WORKER=false on the app to leave it all here)."""
    engine = make_engine(settings.database_url)
    if args.once:
        print(f"delivered {deliver_due(engine, settings)}")
        return 0
    stop = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: stop.set())
    with contextlib.suppress(KeyboardInterrupt):
        run_sender(engine, settings, stop)
    return 0


def prune(settings: Settings, args: argparse.Namespace) -> int:
    """Delete what is past retention; safe to run from cron on any host."""
    engine = make_engine(settings.database_url)
    with Session(engine) as session:
        counts = {
            "sessions": prune_sessions(session, settings.session_retention_days),
            "audit events": prune_events(session, settings.audit_retention_days),
            "delivered outbox messages": prune_delivered(session),
            "one-time tokens": one_time_tokens.prune(session),
            "rate-limit counters": throttle.prune(engine),
        }
    print("pruned " + ", ".join(f"{count} {what}" for what, count in counts.items()))
    return 0


def migrate(settings: Settings, args: argparse.Namespace) -> int:
    """Wait for the database (up to DATABASE_WAIT_SECONDS), then upgrade it to the latest schema."""
    configure_logging(settings)
    where = database_address(settings.database_url)
    try:
        wait_for_database(settings.database_url, settings.database_wait_seconds)
    except DatabaseUnavailable as exc:
        raise SystemExit(f"error: {exc}") from None
    config = Config(str(ALEMBIC_INI))
    # Alembic's env.py takes this connection as is: no second engine, and our log format.
    # A plain engine, not make_engine's: SQLite's foreign_keys pragma must stay off while
    # batch migrations copy and drop tables.
    engine = create_engine(settings.database_url, poolclass=NullPool)
    try:
        with engine.begin() as connection:
            if connection.dialect.name == "postgresql":  # replicas starting together migrate one at a time
                connection.execute(text("SELECT pg_advisory_xact_lock(:key)"), {"key": MIGRATE_LOCK_KEY})
            config.attributes["connection"] = connection
            command.upgrade(config, "head")
    except SQLAlchemyError as exc:
        hint = " (does its folder exist, writable by this user?)" if settings.is_sqlite else ""
        problem = describe_database_error(exc, settings.database_url)
        raise SystemExit(f"error: migrating the database at {where} failed: {problem}{hint}") from None
    finally:
        engine.dispose()
    logger.info("the database at %s has the latest schema", where)
    return 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m auth_service")
    commands = parser.add_subparsers(dest="command", required=True)
    admin = commands.add_parser("create-admin", help=create_admin.__doc__)
    admin.add_argument("--email", required=True)
    admin.add_argument("--password", help=f"for scripts; or set {ADMIN_PASSWORD_ENV}; else you are asked")
    admin.set_defaults(run=create_admin)
    grant = commands.add_parser("grant-role", help=grant_role.__doc__)
    grant.add_argument("--email", required=True)
    grant.add_argument("--role", required=True)
    grant.set_defaults(run=grant_role)
    sender = commands.add_parser("send-mail", help=send_mail.__doc__)
    sender.add_argument("--once", action="store_true", help="one round, then exit (for cron)")
    sender.set_defaults(run=send_mail)
    commands.add_parser("prune", help=prune.__doc__).set_defaults(run=prune)
    commands.add_parser("migrate", help=migrate.__doc__).set_defaults(run=migrate)
    args = parser.parse_args(argv)
    settings = load_settings(Settings)  # every command checks every setting: a bad one stops it with one line
    try:
        return int(args.run(settings, args))
    except ValueError as exc:
        raise SystemExit(f"error: {exc}") from None
