"""Roles: named sets of permissions, and who holds them.

Nobody but a superuser can hand out a permission they do not hold themselves, so
`roles:write` and `roles:assign` are not a way up to more power.
"""

import uuid
from collections import defaultdict
from collections.abc import Iterable
from typing import Any

from sqlalchemy import func
from sqlalchemy.exc import IntegrityError
from sqlmodel import Session, col, select

from auth_service import audit
from auth_service.config import Settings
from auth_service.errors import AppError, ErrorCode, not_found, permission_denied
from auth_service.locks import lock_user
from auth_service.models import Role, User, UserRole, utcnow
from auth_service.principals import Principal


def role_conflict(name: str) -> AppError:
    return AppError(409, ErrorCode.CONFLICT, f"A role named {name!r} already exists.")


ADMIN_ROLE = "admin"  # seeded by the migrations; other services may rely on its name


def check_no_escalation(actor: Principal, permissions: Iterable[str]) -> None:
    missing = sorted(p for p in set(permissions) if not actor.can(p))
    if missing:
        raise permission_denied(f"You cannot grant permissions you do not hold: {', '.join(missing)}.")


def check_holds_role(actor: Principal, role: Role) -> None:
    """Changing or deleting a role needs every permission in it: roles:write alone can
    neither weaken a role above you nor give your own role its name."""
    missing = sorted(p for p in set(role.permissions) if not actor.can(p))
    if missing:
        raise permission_denied(f"You can only change roles whose permissions you hold; missing: {', '.join(missing)}.")


def check_not_builtin(role: Role, action: str) -> None:
    if role.name == ADMIN_ROLE:
        raise AppError(409, ErrorCode.CONFLICT, f"The built-in {ADMIN_ROLE!r} role cannot be {action}.")


def get_role(session: Session, name: str) -> Role:
    role = session.exec(select(Role).where(col(Role.name) == name)).first()
    if role is None:
        raise not_found("Role")
    return role


def list_roles(session: Session, *, offset: int, limit: int) -> tuple[list[Role], int]:
    count = session.exec(select(func.count()).select_from(Role)).one()
    roles = session.exec(select(Role).order_by(col(Role.name)).offset(offset).limit(limit)).all()
    return list(roles), count


def _commit_unique_name(session: Session, name: str) -> None:
    try:
        session.commit()
    except IntegrityError:
        session.rollback()
        raise role_conflict(name) from None


def create_role(
    session: Session,
    settings: Settings,
    actor: Principal,
    *,
    name: str,
    description: str | None,
    permissions: list[str],
) -> Role:
    check_no_escalation(actor, permissions)
    if session.exec(select(Role.id).where(col(Role.name) == name)).first() is not None:
        raise role_conflict(name)
    role = Role(name=name, description=description, permissions=sorted(set(permissions)))
    session.add(role)
    details = {"role": name, "permissions": role.permissions}
    audit.record(session, settings, "role.created", actor_id=actor.id, details=details)
    _commit_unique_name(session, name)
    session.refresh(role)
    return role


def update_role(session: Session, settings: Settings, actor: Principal, role: Role, changes: dict[str, Any]) -> Role:
    """Any change needs every permission of the role before and after it."""
    previous_name = role.name
    check_holds_role(actor, role)
    if "permissions" in changes:
        check_no_escalation(actor, changes["permissions"])
        role.permissions = sorted(set(changes["permissions"]))
    if "name" in changes and changes["name"] != role.name:
        check_not_builtin(role, "renamed")
        if session.exec(select(Role.id).where(col(Role.name) == changes["name"])).first() is not None:
            raise role_conflict(changes["name"])
        role.name = changes["name"]
    if "description" in changes:
        role.description = changes["description"]
    role.updated_at = utcnow()
    session.add(role)
    details = {"role": previous_name, "fields": sorted(changes), "name": role.name, "permissions": role.permissions}
    audit.record(session, settings, "role.updated", actor_id=actor.id, details=details)
    _commit_unique_name(session, role.name)
    session.refresh(role)
    return role


def delete_role(session: Session, settings: Settings, actor: Principal, role: Role) -> None:
    """Holders lose it with it (the link rows cascade)."""
    check_holds_role(actor, role)
    check_not_builtin(role, "deleted")
    name = role.name
    session.delete(role)
    session.flush()  # the cascade's row locks before the audit lock (see audit.record)
    audit.record(session, settings, "role.deleted", actor_id=actor.id, details={"role": name})
    session.commit()


def assign_role(session: Session, settings: Settings, actor: Principal, user: User, role: Role) -> None:
    """Give a user a role; holding it already is not an error (and records nothing).

    The user's row is locked first, so the grant serializes with an admin's change to the
    same account (which checks the account's permissions under the same lock)."""
    check_no_escalation(actor, role.permissions)
    lock_user(session, user.id)
    if session.get(UserRole, (user.id, role.id)) is not None:
        session.rollback()
        return
    session.add(UserRole(user_id=user.id, role_id=role.id))
    audit.record(session, settings, "role.assigned", actor_id=actor.id, subject_id=user.id, details={"role": role.name})
    try:
        session.commit()
    except IntegrityError:  # assigned concurrently: the outcome is the same
        session.rollback()


def remove_role(session: Session, settings: Settings, actor: Principal, user: User, role: Role) -> None:
    """Take a role away; not holding it is not an error."""
    check_no_escalation(actor, role.permissions)
    link = session.get(UserRole, (user.id, role.id))
    if link is not None:
        session.delete(link)
        details = {"role": role.name}
        audit.record(session, settings, "role.removed", actor_id=actor.id, subject_id=user.id, details=details)
        session.commit()


def role_names(session: Session, user_ids: list[uuid.UUID]) -> dict[uuid.UUID, list[str]]:
    """Role names per user, for many users in one query."""
    names: dict[uuid.UUID, list[str]] = defaultdict(list)
    if user_ids:
        rows = session.exec(
            select(UserRole.user_id, Role.name)
            .join(Role, col(Role.id) == col(UserRole.role_id))
            .where(col(UserRole.user_id).in_(user_ids))
            .order_by(col(Role.name))
        ).all()
        for user_id, name in rows:
            names[user_id].append(name)
    return names


def granted_permissions(session: Session, user_id: uuid.UUID) -> frozenset[str]:
    """Every permission the user's roles grant (a superuser holds more: see Principal.can)."""
    rows = session.exec(
        select(Role.permissions)
        .join(UserRole, col(UserRole.role_id) == col(Role.id))
        .where(col(UserRole.user_id) == user_id)
    ).all()
    return frozenset(permission for permissions in rows for permission in permissions or [])
