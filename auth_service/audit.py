"""The audit log: events written in the transaction of the change they record, and
handed to webhooks through the outbox, signed."""

import base64
import hashlib
import hmac
import json
import time
import urllib.request
import uuid
from datetime import datetime, timedelta
from typing import Any

from sqlalchemy import delete, func, or_, text
from sqlmodel import Session, col, select

from auth_service.config import Settings
from auth_service.models import AuditEvent, OutboxMessage, utcnow
from auth_service.request_context import current_request

WEBHOOK = "webhook"
# Any constant: the PostgreSQL advisory lock that orders audit inserts by commit.
AUDIT_LOCK_KEY = 0x61756469


def event_json(event: AuditEvent) -> dict[str, Any]:
    return {
        "id": event.id,
        "type": event.type,
        "at": event.at.isoformat().replace("+00:00", "Z"),
        "actor_id": str(event.actor_id) if event.actor_id else None,
        "subject_id": str(event.subject_id) if event.subject_id else None,
        "client_ip": event.client_ip,
        "user_agent": event.user_agent,
        "request_id": event.request_id,
        "details": event.details,
    }


def sign(secret: str, body: str) -> str:
    """`X-Webhook-Signature`: the hex HMAC-SHA256 of the body."""
    return "sha256=" + hmac.new(secret.encode(), body.encode(), hashlib.sha256).hexdigest()


def sign_standard(secret: str, webhook_id: str, timestamp: int, body: str) -> str:
    """`webhook-signature` (Standard Webhooks): the base64 HMAC-SHA256 of "id.timestamp.body",
    so a receiver can refuse a replayed or re-timed delivery. The key is the secret's bytes."""
    mac = hmac.new(secret.encode(), f"{webhook_id}.{timestamp}.{body}".encode(), hashlib.sha256).digest()
    return "v1," + base64.b64encode(mac).decode()


def record(
    session: Session,
    settings: Settings,
    type: str,
    *,
    actor_id: uuid.UUID | None = None,
    subject_id: uuid.UUID | None = None,
    details: dict[str, Any] | None = None,
) -> None:
    """Add an event (and a webhook delivery per WEBHOOK_URLS) to the caller's transaction.

    Call it last before commit. On PostgreSQL it takes a transaction-scoped advisory lock
    first, so ids are assigned in commit order and a poller reading `after=<id>` never
    skips a row committed late; SQLite has one writer, so it is ordered already. Pending
    changes are flushed before the lock, so every transaction takes its row locks first
    and the advisory lock last, and after it only inserts: no lock-order deadlock.
    """
    session.flush()
    if session.get_bind().dialect.name == "postgresql":
        session.connection().execute(text("SELECT pg_advisory_xact_lock(:key)"), {"key": AUDIT_LOCK_KEY})
    info = current_request.get()
    event = AuditEvent(
        type=type,
        actor_id=actor_id,
        subject_id=subject_id,
        client_ip=info.client_ip if info else None,
        user_agent=info.user_agent[:512] if info and info.user_agent else None,
        request_id=info.request_id if info else None,
        details=details or {},
    )
    session.add(event)
    if settings.webhook_urls:
        session.flush()  # assigns the id the consumers key on
        body = json.dumps(event_json(event), separators=(",", ":"), sort_keys=True)
        for url in settings.webhook_urls:
            session.add(OutboxMessage(kind=WEBHOOK, payload={"url": url, "id": event.id, "type": type, "body": body}))


def deliver_webhook(settings: Settings, payload: dict[str, Any]) -> None:
    """POST the event; any answer but 2xx (or no answer) is a failure to retry."""
    body: str = payload["body"]
    webhook_id, timestamp = str(payload["id"]), int(time.time())
    headers = {
        "Content-Type": "application/json",
        "User-Agent": "auth_service-webhook",
        "X-Webhook-Id": webhook_id,
        "X-Webhook-Event": payload["type"],
        "webhook-id": webhook_id,
        "webhook-timestamp": str(timestamp),
    }
    if settings.webhook_secret:
        secret = settings.webhook_secret.get_secret_value()
        headers["X-Webhook-Signature"] = sign(secret, body)
        headers["webhook-signature"] = sign_standard(secret, webhook_id, timestamp, body)
    request = urllib.request.Request(payload["url"], data=body.encode(), headers=headers, method="POST")  # noqa: S310
    with urllib.request.urlopen(request, timeout=settings.webhook_timeout) as response:  # noqa: S310
        if not 200 <= response.status < 300:
            raise RuntimeError(f"webhook answered {response.status}")


def list_events(
    session: Session,
    *,
    offset: int,
    limit: int,
    after: int | None = None,
    user_id: uuid.UUID | None = None,
    type: str | None = None,
    since: datetime | None = None,
    until: datetime | None = None,
) -> tuple[list[AuditEvent], int]:
    conditions: list[Any] = []
    if after is not None:
        conditions.append(col(AuditEvent.id) > after)
    if user_id is not None:
        conditions.append(or_(col(AuditEvent.actor_id) == user_id, col(AuditEvent.subject_id) == user_id))
    if type is not None:
        conditions.append(col(AuditEvent.type) == type)
    if since is not None:
        conditions.append(col(AuditEvent.at) >= since)
    if until is not None:
        conditions.append(col(AuditEvent.at) < until)
    count = session.exec(select(func.count()).select_from(AuditEvent).where(*conditions)).one()
    events = session.exec(
        select(AuditEvent).where(*conditions).order_by(col(AuditEvent.id)).offset(offset).limit(limit)
    ).all()
    return list(events), count


def prune_events(session: Session, retention_days: int) -> int:
    cutoff = utcnow() - timedelta(days=retention_days)
    result = session.exec(delete(AuditEvent).where(col(AuditEvent.at) < cutoff))
    session.commit()
    return int(result.rowcount)
