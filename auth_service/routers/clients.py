"""Service clients (/clients): other services' credentials, managed by admins."""

from typing import Annotated

from fastapi import APIRouter, Depends, Path, status

from auth_service import clients
from auth_service.deps import DbSession, PageDep, SettingsDep, require_permission
from auth_service.errors import error_responses
from auth_service.permissions import CLIENTS_READ, CLIENTS_WRITE
from auth_service.principals import Principal
from auth_service.schemas import ClientCreate, ClientPublic, ClientsPublic, ClientUpdate, ClientWithSecret

router = APIRouter(prefix="/clients", tags=["clients"])

CanRead = Annotated[Principal, Depends(require_permission(CLIENTS_READ))]
CanWrite = Annotated[Principal, Depends(require_permission(CLIENTS_WRITE))]
ClientId = Annotated[str, Path(max_length=64, pattern=r"^[A-Za-z0-9_-]+$")]


@router.get("", response_model=ClientsPublic, responses=error_responses(401, 403, 422))
def list_clients(_: CanRead, db: DbSession, page: PageDep) -> ClientsPublic:
    found, count = clients.list_clients(db, offset=page.offset, limit=page.limit)
    return ClientsPublic(data=[ClientPublic.model_validate(c) for c in found], count=count)


@router.post(
    "",
    status_code=status.HTTP_201_CREATED,
    response_model=ClientWithSecret,
    responses=error_responses(401, 403, 422),
)
def create_client(body: ClientCreate, principal: CanWrite, db: DbSession, settings: SettingsDep) -> ClientWithSecret:
    """Create a client with permissions you hold yourself. The secret is in this answer only."""
    client, secret = clients.create_client(db, settings, name=body.name, permissions=body.permissions, actor=principal)
    return ClientWithSecret.model_validate(client, update={"client_secret": secret})


@router.get("/{client_id}", response_model=ClientPublic, responses=error_responses(401, 403, 404, 422))
def read_client(client_id: ClientId, _: CanRead, db: DbSession) -> ClientPublic:
    return ClientPublic.model_validate(clients.get_client(db, client_id))


@router.patch("/{client_id}", response_model=ClientPublic, responses=error_responses(401, 403, 404, 422))
def update_client(
    client_id: ClientId, body: ClientUpdate, principal: CanWrite, db: DbSession, settings: SettingsDep
) -> ClientPublic:
    """Rename, (de)activate, or change the permissions; deactivating cuts its tokens at once."""
    client = clients.update_client(
        db, settings, principal, clients.get_client(db, client_id), body.model_dump(exclude_unset=True)
    )
    return ClientPublic.model_validate(client)


@router.post("/{client_id}/secret", response_model=ClientWithSecret, responses=error_responses(401, 403, 404, 422))
def rotate_secret(client_id: ClientId, principal: CanWrite, db: DbSession, settings: SettingsDep) -> ClientWithSecret:
    """A new secret, shown once; the old one and its tokens stop working at once."""
    client = clients.get_client(db, client_id)
    secret = clients.rotate_secret(db, settings, principal, client)
    return ClientWithSecret.model_validate(client, update={"client_secret": secret})


@router.delete("/{client_id}", status_code=status.HTTP_204_NO_CONTENT, responses=error_responses(401, 403, 404, 422))
def delete_client(client_id: ClientId, principal: CanWrite, db: DbSession, settings: SettingsDep) -> None:
    """Delete a client; its tokens stop working at once."""
    clients.delete_client(db, settings, principal, clients.get_client(db, client_id))
