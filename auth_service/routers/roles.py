"""Roles (/roles) and who holds them (/users/{id}/roles/{name})."""

import uuid
from typing import Annotated

from fastapi import APIRouter, Depends, status

from auth_service import accounts, roles
from auth_service.deps import DbSession, PageDep, SettingsDep, require_permission
from auth_service.errors import error_responses
from auth_service.permissions import ROLES_ASSIGN, ROLES_READ, ROLES_WRITE
from auth_service.principals import Principal
from auth_service.schemas import RoleCreate, RoleName, RolePublic, RolesPublic, RoleUpdate, UserPublic

router = APIRouter(tags=["roles"])

CanRead = Annotated[Principal, Depends(require_permission(ROLES_READ))]
CanWrite = Annotated[Principal, Depends(require_permission(ROLES_WRITE))]
CanAssign = Annotated[Principal, Depends(require_permission(ROLES_ASSIGN))]


@router.get("/roles", response_model=RolesPublic, responses=error_responses(401, 403, 422))
def list_roles(
    _: CanRead,
    db: DbSession,
    page: PageDep,
) -> RolesPublic:
    found, count = roles.list_roles(db, offset=page.offset, limit=page.limit)
    return RolesPublic(data=[RolePublic.model_validate(r) for r in found], count=count)


@router.post(
    "/roles",
    status_code=status.HTTP_201_CREATED,
    response_model=RolePublic,
    responses=error_responses(401, 403, 409, 422),
)
def create_role(body: RoleCreate, principal: CanWrite, db: DbSession, settings: SettingsDep) -> RolePublic:
    """Create a role. You can only put in permissions you hold yourself (superusers hold all)."""
    role = roles.create_role(
        db, settings, principal, name=body.name, description=body.description, permissions=body.permissions
    )
    return RolePublic.model_validate(role)


@router.get("/roles/{name}", response_model=RolePublic, responses=error_responses(401, 403, 404, 422))
def read_role(name: RoleName, _: CanRead, db: DbSession) -> RolePublic:
    return RolePublic.model_validate(roles.get_role(db, name))


@router.patch("/roles/{name}", response_model=RolePublic, responses=error_responses(401, 403, 404, 409, 422))
def update_role(
    name: RoleName, body: RoleUpdate, principal: CanWrite, db: DbSession, settings: SettingsDep
) -> RolePublic:
    """Rename, describe, or replace the permissions; holders get the change on their next request."""
    role = roles.update_role(db, settings, principal, roles.get_role(db, name), body.model_dump(exclude_unset=True))
    return RolePublic.model_validate(role)


@router.delete("/roles/{name}", status_code=status.HTTP_204_NO_CONTENT, responses=error_responses(401, 403, 404, 422))
def delete_role(name: RoleName, principal: CanWrite, db: DbSession, settings: SettingsDep) -> None:
    """Delete a role; every user holding it loses it."""
    roles.delete_role(db, settings, principal, roles.get_role(db, name))


@router.post("/users/{user_id}/roles/{name}", response_model=UserPublic, responses=error_responses(401, 403, 404, 422))
def assign_role(
    user_id: uuid.UUID, name: RoleName, principal: CanAssign, db: DbSession, settings: SettingsDep
) -> UserPublic:
    """Give a user a role (already holding it is fine)."""
    user = accounts.get_user(db, user_id)
    roles.assign_role(db, settings, principal, user, roles.get_role(db, name))
    return accounts.public_user(db, user)


@router.delete(
    "/users/{user_id}/roles/{name}", response_model=UserPublic, responses=error_responses(401, 403, 404, 422)
)
def remove_role(
    user_id: uuid.UUID, name: RoleName, principal: CanAssign, db: DbSession, settings: SettingsDep
) -> UserPublic:
    """Take a role from a user (not holding it is fine)."""
    user = accounts.get_user(db, user_id)
    roles.remove_role(db, settings, principal, user, roles.get_role(db, name))
    return accounts.public_user(db, user)
