"""Who is asking, for the audit log and the logs: set once per request by middleware."""

from contextvars import ContextVar
from dataclasses import dataclass


@dataclass(frozen=True)
class RequestInfo:
    request_id: str
    client_ip: str | None
    user_agent: str | None


current_request: ContextVar[RequestInfo | None] = ContextVar("current_request", default=None)


def client_ip() -> str | None:
    info = current_request.get()
    return info.client_ip if info else None
