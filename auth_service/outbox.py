"""The outbox: deliver what transactions queued, at least once, retrying with backoff.

Rows are claimed with a lease (`locked_until`) taken under `FOR UPDATE SKIP LOCKED` on
PostgreSQL (SQLite has one writer, so its UPDATE is enough). Several workers and hosts
can run senders side by side: each row goes to one of them, and a sender that dies
mid-delivery only delays its rows until the lease runs out.
"""

import logging
import threading
from collections.abc import Callable
from datetime import datetime, timedelta
from typing import Any

from sqlalchemy import Engine, delete, func, or_, update
from sqlalchemy.exc import InterfaceError, OperationalError
from sqlmodel import Session, col, select

from auth_service.audit import WEBHOOK, deliver_webhook
from auth_service.config import Settings
from auth_service.db import describe_database_error
from auth_service.email_flows import RESET_REQUEST, handle_reset_request
from auth_service.emails import MAIL, mail_from_payload, send_mail
from auth_service.models import OutboxMessage, utcnow

logger = logging.getLogger(__name__)

LEASE = timedelta(minutes=2)
MAX_BACKOFF = timedelta(hours=1)
BATCH = 20

Deliverer = Callable[[Engine, Settings, dict[str, Any]], None]


def _deliver_mail(engine: Engine, settings: Settings, payload: dict[str, Any]) -> None:
    send_mail(settings, mail_from_payload(payload))


def _deliver_webhook(engine: Engine, settings: Settings, payload: dict[str, Any]) -> None:
    deliver_webhook(settings, payload)


DELIVERERS: dict[str, Deliverer] = {
    MAIL: _deliver_mail,
    RESET_REQUEST: handle_reset_request,
    WEBHOOK: _deliver_webhook,
}


def backoff(attempts: int) -> timedelta:
    """5 s, 10 s, 20 s ... doubling, at most an hour: never given up on."""
    return min(timedelta(seconds=5 * 2 ** min(attempts - 1, 20)), MAX_BACKOFF)


def _unclaimed(now: datetime) -> list[Any]:
    return [
        col(OutboxMessage.sent_at).is_(None),
        col(OutboxMessage.available_at) <= now,
        or_(col(OutboxMessage.locked_until).is_(None), col(OutboxMessage.locked_until) < now),
    ]


def claim_due(engine: Engine, now: datetime, limit: int = BATCH) -> list[OutboxMessage]:
    """Lease up to `limit` due rows. Each lease is a conditional UPDATE, so of two senders
    racing for a row exactly one gets it (SKIP LOCKED just spares PostgreSQL the wait)."""
    with Session(engine, expire_on_commit=False) as session:
        due = (
            select(OutboxMessage)
            .where(*_unclaimed(now))
            .order_by(col(OutboxMessage.available_at))
            .limit(limit)
            .with_for_update(skip_locked=True)
        )
        claimed = []
        for row in session.exec(due).all():
            lease = update(OutboxMessage).where(col(OutboxMessage.id) == row.id, *_unclaimed(now))
            if session.exec(lease.values(locked_until=now + LEASE)).rowcount == 1:
                claimed.append(row)
        session.commit()
        return claimed


def _finish(engine: Engine, row: OutboxMessage, error: Exception | None, now: datetime) -> None:
    with Session(engine) as session:
        if error is None:
            # Keep who and what for the record, not the body: it holds a live token.
            kept = {k: v for k, v in row.payload.items() if k in ("to", "subject", "email", "url", "type")}
            values: dict[str, Any] = {"sent_at": utcnow(), "locked_until": None, "payload": kept, "last_error": None}
        else:
            attempts = row.attempts + 1
            values = {
                "attempts": attempts,
                "available_at": now + backoff(attempts),
                "locked_until": None,
                "last_error": f"{type(error).__name__}: {error}"[:500],
            }
        session.exec(update(OutboxMessage).where(col(OutboxMessage.id) == row.id).values(**values))
        session.commit()


def deliver_due(engine: Engine, settings: Settings, now: datetime | None = None) -> int:
    """Handle one batch of what is due; returns how many succeeded. Failures are rescheduled."""
    now = now or utcnow()
    delivered = 0
    for row in claim_due(engine, now):
        try:
            DELIVERERS[row.kind](engine, settings, row.payload)
        except Exception as exc:  # any failure of the far side: retry later
            logger.warning(
                "outbox: %s %s failed (attempt %d): %s", row.kind, row.id, row.attempts + 1, type(exc).__name__
            )
            _finish(engine, row, exc, now)
        else:
            _finish(engine, row, None, now)
            delivered += 1
    return delivered


def backlog(engine: Engine) -> int:
    with Session(engine) as session:
        return session.exec(
            select(func.count()).select_from(OutboxMessage).where(col(OutboxMessage.sent_at).is_(None))
        ).one()


def run_sender(engine: Engine, settings: Settings, stop: threading.Event) -> None:
    """Deliver until `stop` is set: again at once after a round that did something
    (it may have queued more), else after OUTBOX_POLL_SECONDS."""
    failing: str | None = None  # why the last round failed, if it did
    while not stop.is_set():
        busy = False
        try:
            busy = deliver_due(engine, settings) > 0
        except (OperationalError, InterfaceError) as exc:  # the database is down, or refuses us
            problem = describe_database_error(exc, settings.database_url)
            if problem != failing:  # one line per cause, not a traceback per round
                logger.warning(
                    "outbox: the database failed (%s); trying again every %gs", problem, settings.outbox_poll_seconds
                )
            failing = problem
        except Exception:  # keep the thread alive and try again
            logger.exception("outbox: delivery round failed")
        else:
            if failing is not None:
                logger.info("outbox: the database answers again")
            failing = None
        if not busy:
            stop.wait(settings.outbox_poll_seconds)


def start_sender_thread(engine: Engine, settings: Settings) -> Callable[[], None]:
    """Start the in-app sender; returns a function that stops it."""
    stop = threading.Event()
    thread = threading.Thread(target=run_sender, args=(engine, settings, stop), name="outbox-sender", daemon=True)
    thread.start()

    def stop_sender() -> None:
        stop.set()
        thread.join(timeout=settings.smtp_timeout + 5)

    return stop_sender


def prune_delivered(session: Session, older_than: timedelta = timedelta(days=7)) -> int:
    """Forget delivered messages after a week (undelivered ones stay until they go)."""
    result = session.exec(delete(OutboxMessage).where(col(OutboxMessage.sent_at) < utcnow() - older_than))
    session.commit()
    return int(result.rowcount)
