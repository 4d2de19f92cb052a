"""`python -m auth_service COMMAND`: the few jobs an operator runs by hand or from cron."""

import argparse
import getpass
import os
import sys

from sqlmodel import Session

from auth_service.accounts import ensure_superuser
from auth_service.config import Settings
from auth_service.db import make_engine
from auth_service.password_policy import password_problems
from auth_service.sessions import prune_sessions

ADMIN_PASSWORD_ENV = "ADMIN_PASSWORD"


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


def prune(settings: Settings, args: argparse.Namespace) -> int:
    """Delete what is past retention; safe to run from cron on any host."""
    with Session(make_engine(settings.database_url)) as session:
        sessions = prune_sessions(session, settings.session_retention_days)
    print(f"pruned {sessions} sessions")
    return 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m auth_service")
    commands = parser.add_subparsers(dest="command", required=True)
    admin = commands.add_parser("create-admin", help=create_admin.__doc__)
    admin.add_argument("--email", required=True)
    admin.add_argument("--password", help=f"for scripts; or set {ADMIN_PASSWORD_ENV}; else you are asked")
    admin.set_defaults(run=create_admin)
    commands.add_parser("prune", help=prune.__doc__).set_defaults(run=prune)
    args = parser.parse_args(argv)
    try:
        return int(args.run(Settings(), args))
    except ValueError as exc:
        raise SystemExit(f"error: {exc}") from None
