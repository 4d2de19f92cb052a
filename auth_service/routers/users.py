"""Your own account (/users/me) and, with permissions, everyone's (/users)."""

import uuid
from typing import Annotated

from fastapi import APIRouter, Depends, Query, status

from auth_service import accounts
from auth_service.deps import (
    CurrentPrincipal,
    DbSession,
    EnrollingPrincipal,
    PageDep,
    SettingsDep,
    UserPrincipal,
    require_permission,
)
from auth_service.errors import error_responses, permission_denied
from auth_service.permissions import USERS_DELETE, USERS_READ, USERS_WRITE
from auth_service.principals import Principal
from auth_service.schemas import (
    PasswordChange,
    PasswordConfirm,
    SearchText,
    UserAdminCreate,
    UserAdminUpdate,
    UserPublic,
    UsersPublic,
    UserUpdateMe,
)

router = APIRouter(prefix="/users", tags=["users"])


@router.get("/me", response_model=UserPublic, responses=error_responses(401, 403))
async def read_me(principal: EnrollingPrincipal) -> UserPublic:
    """Your account, from the very query that checked your token: no second trip."""
    return UserPublic.model_validate(principal.account, update={"roles": principal.roles}, from_attributes=True)


@router.patch("/me", response_model=UserPublic, responses=error_responses(400, 401, 403, 409, 422, 429))
def update_me(body: UserUpdateMe, principal: UserPrincipal, db: DbSession, settings: SettingsDep) -> UserPublic:
    """Change your name, or your email with `current_password`; a new email must be verified again."""
    user = accounts.get_user(db, principal.id)
    changed = accounts.update_own_profile(db, settings, user, body.model_dump(exclude_unset=True))
    return accounts.public_user(db, changed)


@router.post("/me/password", status_code=status.HTTP_204_NO_CONTENT, responses=error_responses(400, 401, 403, 422, 429))
def change_my_password(body: PasswordChange, principal: UserPrincipal, db: DbSession, settings: SettingsDep) -> None:
    """Change your password; every other session of yours ends (this one goes on)."""
    user = accounts.get_user(db, principal.id)
    accounts.change_password(
        db, settings, user, body.current_password, body.new_password, keep_session=principal.session_id
    )


@router.delete("/me", status_code=status.HTTP_204_NO_CONTENT, responses=error_responses(400, 401, 403, 409, 422, 429))
def delete_me(body: PasswordConfirm, principal: UserPrincipal, db: DbSession, settings: SettingsDep) -> None:
    """Delete your account, confirmed with your password."""
    accounts.delete_own_account(db, settings, accounts.get_user(db, principal.id), body.password)


@router.get("", response_model=UsersPublic, responses=error_responses(401, 403, 422))
def list_users(
    _: Annotated[Principal, Depends(require_permission(USERS_READ))],
    db: DbSession,
    page: PageDep,
    q: Annotated[SearchText | None, Query(description="Part of an email or name, any case.")] = None,
    is_active: bool | None = None,
) -> UsersPublic:
    users, count = accounts.list_users(db, offset=page.offset, limit=page.limit, q=q, is_active=is_active)
    return UsersPublic(data=accounts.public_users(db, users), count=count)


@router.post(
    "", status_code=status.HTTP_201_CREATED, response_model=UserPublic, responses=error_responses(401, 403, 409, 422)
)
def create_user(
    body: UserAdminCreate,
    principal: Annotated[Principal, Depends(require_permission(USERS_WRITE))],
    db: DbSession,
    settings: SettingsDep,
) -> UserPublic:
    """Create an account under the password policy. Only a superuser can create a superuser."""
    if body.is_superuser and not principal.is_superuser:
        raise permission_denied("Only a superuser can create a superuser.")
    user = accounts.create_user(db, settings, actor_id=principal.id, **body.model_dump())
    return accounts.public_user(db, user)


@router.get("/{user_id}", response_model=UserPublic, responses=error_responses(401, 403, 404, 422))
def read_user(user_id: uuid.UUID, principal: CurrentPrincipal, db: DbSession) -> UserPublic:
    """Any user with users:read; your own account always."""
    if user_id != principal.id and not principal.can(USERS_READ):
        raise permission_denied(f"This requires the permission {USERS_READ}.")
    return accounts.public_user(db, accounts.get_user(db, user_id))


@router.patch("/{user_id}", response_model=UserPublic, responses=error_responses(401, 403, 404, 409, 422))
def update_user(
    user_id: uuid.UUID,
    body: UserAdminUpdate,
    principal: Annotated[Principal, Depends(require_permission(USERS_WRITE))],
    db: DbSession,
    settings: SettingsDep,
) -> UserPublic:
    """Change any field of an account whose permissions you all hold. Deactivating a user or
    setting a password ends their sessions."""
    changed = accounts.admin_update_user(db, settings, principal, user_id, body.model_dump(exclude_unset=True))
    return accounts.public_user(db, changed)


@router.delete("/{user_id}", status_code=status.HTTP_204_NO_CONTENT, responses=error_responses(401, 403, 404, 409, 422))
def delete_user(
    user_id: uuid.UUID,
    principal: Annotated[Principal, Depends(require_permission(USERS_DELETE))],
    db: DbSession,
    settings: SettingsDep,
) -> None:
    """Delete another user whose permissions you all hold (yourself: DELETE /users/me)."""
    accounts.admin_delete_user(db, settings, principal, user_id)
