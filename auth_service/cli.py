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
from sqlalchemy.exc import OperationalError, ProgrammingError, SQLAlchemyError
from sqlalchemy.pool import NullPool
from sqlmodel import Session, col, select

from auth_service import audit, clients, one_time_tokens, signing_keys, throttle
from auth_service.accounts import create_superuser, find_user_by_email, promote_to_superuser
from auth_service.audit import prune_events
from auth_service.config import Settings, load_settings
from auth_service.db import (
    DatabaseUnavailable,
    database_address,
    describe_database_error,
    make_engine,
    new_session,
    wait_for_database,
)
from auth_service.locks import lock_user
from auth_service.logs import configure_logging
from auth_service.models import Role, UserRole
from auth_service.outbox import deliver_due, prune_delivered, run_sender
from auth_service.password_policy import password_problems
from auth_service.schemas import ClientCreate, normalize_email
from auth_service.security import ASYMMETRIC
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
    """Create a superuser; an existing account only with --promote-existing."""
    password = _admin_password(args)
    problems = password_problems(settings, password, args.email)
    if problems:
        raise SystemExit(" ".join(problems))
    with new_session(make_engine(settings.database_url)) as session:
        created = create_superuser(session, settings, args.email, password)
        if created is not None:
            print(f"created: {created.email} ({created.id})")
            return 0
        user = find_user_by_email(session, normalize_email(args.email))
        if user is None:  # deleted since: try again
            raise SystemExit("error: the account changed while this ran; run the command again")
        if not args.promote_existing:
            what = "a superuser" if user.is_superuser else "an ordinary account"
            raise SystemExit(
                f"error: {user.email} already exists ({what}); nothing changed. To make it a superuser with this "
                "password, ending its sessions, run again with --promote-existing"
            )
        promote_to_superuser(session, settings, user, password)
        print(f"made superuser: {user.email} ({user.id}); its password was replaced and its sessions ended")
    return 0


def grant_role(settings: Settings, args: argparse.Namespace) -> int:
    """Give a user a role, for the first setup (no permission check: you own the database).
    Only to a verified address (whoever signed up first with it may not be its owner),
    unless --force."""
    with new_session(make_engine(settings.database_url)) as session:
        user = find_user_by_email(session, normalize_email(args.email))
        if user is None:
            raise SystemExit(f"no user with the email {args.email}")
        role = session.exec(select(Role).where(col(Role.name) == args.role)).first()
        if role is None:
            raise SystemExit(f"no role named {args.role}")
        user = lock_user(session, user.id)
        if not user.is_verified and not args.force:
            raise SystemExit(
                f"error: {user.email} is not verified: anyone could have signed up with it. Verify it first "
                "(or run again with --force if you know whose account it is)"
            )
        if session.get(UserRole, (user.id, role.id)) is None:
            session.add(UserRole(user_id=user.id, role_id=role.id))
            details = {"role": role.name, "by": "cli"}
            audit.record(session, settings, "role.assigned", subject_id=user.id, details=details)
        session.commit()
    print(f"{args.email}: holds role {args.role}")
    return 0


def rotate_signing_key(settings: Settings, args: argparse.Namespace) -> int:
    """Make a new signing key current; the old one verifies until its tokens expire."""
    if settings.jwt_algorithm not in ASYMMETRIC:
        raise SystemExit(
            f"error: JWT_ALGORITHM={settings.jwt_algorithm} signs with SECRET_KEY; there is no key to rotate"
        )
    kid, previous = signing_keys.rotate(make_engine(settings.database_url), settings, expire_previous_now=args.now)
    print(f"signing with {kid}")
    if previous is not None and previous.expires_at is not None:
        print(f"{previous.kid} verifies until {previous.expires_at.isoformat()}; `prune` deletes it after that")
    return 0


def create_client(settings: Settings, args: argparse.Namespace) -> int:
    """Create a service client; prints its id and secret (the secret is not kept)."""
    permissions = [p for p in (args.permissions or "").replace(",", " ").split() if p]
    body = ClientCreate.model_validate({"name": args.name, "permissions": permissions})
    with new_session(make_engine(settings.database_url)) as session:
        client, secret = clients.create_client(
            session, settings, name=body.name, permissions=body.permissions, actor=None
        )
    print(f"client_id={client.client_id}\nclient_secret={secret}")
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
            "retired signing keys": signing_keys.prune(engine),
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
    admin.add_argument(
        "--promote-existing",
        action="store_true",
        help="if the address has an account, make it superuser with this password and end its sessions",
    )
    admin.set_defaults(run=create_admin)
    grant = commands.add_parser("grant-role", help=grant_role.__doc__)
    grant.add_argument("--email", required=True)
    grant.add_argument("--role", required=True)
    grant.add_argument("--force", action="store_true", help="also to an address nobody has verified")
    grant.set_defaults(run=grant_role)
    sender = commands.add_parser("send-mail", help=send_mail.__doc__)
    sender.add_argument("--once", action="store_true", help="one round, then exit (for cron)")
    sender.set_defaults(run=send_mail)
    commands.add_parser("prune", help=prune.__doc__).set_defaults(run=prune)
    rotate = commands.add_parser("rotate-signing-key", help=rotate_signing_key.__doc__)
    rotate.add_argument("--now", action="store_true", help="the old key stops verifying at once (it leaked)")
    rotate.set_defaults(run=rotate_signing_key)
    client = commands.add_parser("create-client", help=create_client.__doc__)
    client.add_argument("--name", required=True)
    client.add_argument("--permissions", help="comma- or space-separated, e.g. users:read,audit:read")
    client.set_defaults(run=create_client)
    commands.add_parser("migrate", help=migrate.__doc__).set_defaults(run=migrate)
    args = parser.parse_args(argv)
    settings = load_settings(Settings)  # every command checks every setting: a bad one stops it with one line
    try:
        return int(args.run(settings, args))
    except ValueError as exc:
        raise SystemExit(f"error: {exc}") from None
    except (OperationalError, ProgrammingError) as exc:
        raise SystemExit(
            f"error: the database cannot be used ({type(exc.orig).__name__}): is it reachable, and migrated "
            "(make migrate, or alembic upgrade head)?"
        ) from None
