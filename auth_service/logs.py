"""Logging: readable text by default, one JSON object per line with LOG_FORMAT=json."""

import json
import logging
from typing import Any

from auth_service.config import Settings
from auth_service.request_context import current_request

# Fields that callers pass with `extra=` and that the JSON form should carry.
EXTRA_FIELDS = ("method", "route", "path", "status", "duration_ms", "client_ip")


class RequestIdFilter(logging.Filter):
    """Stamp every record with the request it belongs to, if any."""

    def filter(self, record: logging.LogRecord) -> bool:
        info = current_request.get()
        record.request_id = info.request_id if info else "-"
        return True


class JsonFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        entry: dict[str, Any] = {
            "time": self.formatTime(record, "%Y-%m-%dT%H:%M:%S%z"),
            "level": record.levelname,
            "logger": record.name,
            "message": record.getMessage(),
            "request_id": getattr(record, "request_id", None),
        }
        entry.update({key: getattr(record, key) for key in EXTRA_FIELDS if hasattr(record, key)})
        if record.exc_info:
            entry["exception"] = self.formatException(record.exc_info)
        return json.dumps(entry, default=str)


def configure_logging(settings: Settings) -> None:
    handler = logging.StreamHandler()
    handler.addFilter(RequestIdFilter())
    if settings.log_format == "json":
        handler.setFormatter(JsonFormatter())
    else:
        handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s [%(request_id)s] %(message)s"))
    handler.set_name("auth_service")
    root = logging.getLogger()
    # Replace our own handler (create_app may run twice in a process), keep anyone else's.
    root.handlers = [h for h in root.handlers if h.get_name() != "auth_service"] + [handler]
    root.setLevel(settings.log_level.upper())
