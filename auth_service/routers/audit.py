"""The audit log, for people (filters) and for programs (poll with `after`)."""

import uuid
from typing import Annotated

from fastapi import APIRouter, Depends, Query

from auth_service import audit
from auth_service.deps import DbSession, PageDep, require_permission
from auth_service.errors import error_responses
from auth_service.permissions import AUDIT_READ
from auth_service.principals import Principal
from auth_service.schemas import AuditEventPublic, AuditEventsPublic, EventType, UTCTime

router = APIRouter(tags=["audit"])


@router.get("/audit-events", response_model=AuditEventsPublic, responses=error_responses(401, 403, 422))
def list_audit_events(
    _: Annotated[Principal, Depends(require_permission(AUDIT_READ))],
    db: DbSession,
    page: PageDep,
    after: Annotated[
        int | None, Query(ge=0, le=2**63 - 1, description="Only events with a larger id: poll with the last id seen.")
    ] = None,
    user_id: Annotated[
        uuid.UUID | None, Query(description="Events where this user is the actor or the subject.")
    ] = None,
    type: Annotated[EventType | None, Query(description="One event type, e.g. auth.login_failed.")] = None,
    since: Annotated[UTCTime | None, Query(description="At or after this time (ISO 8601; UTC if no offset).")] = None,
    until: Annotated[UTCTime | None, Query(description="Before this time (ISO 8601; UTC if no offset).")] = None,
) -> AuditEventsPublic:
    """Oldest first, by id. Ids grow in commit order, so `after=<last id>` never skips or repeats."""
    events, count = audit.list_events(
        db, offset=page.offset, limit=page.limit, after=after, user_id=user_id, type=type, since=since, until=until
    )
    return AuditEventsPublic(data=[AuditEventPublic.model_validate(e) for e in events], count=count)
