"""Logging: text or one-JSON-object-per-line, every record tagged with the request id."""

from __future__ import annotations

import json
import logging
import sys
from contextvars import ContextVar, Token
from datetime import UTC, datetime

_request_id: ContextVar[str | None] = ContextVar("request_id", default=None)


def current_request_id() -> str | None:
    """The id of the request being served by this task, if any."""
    return _request_id.get()


def set_request_id(value: str | None) -> Token[str | None]:
    """Bind the request id to the current context; returns the token to reset it."""
    return _request_id.set(value)


def reset_request_id(token: Token[str | None]) -> None:
    """Undo `set_request_id`."""
    _request_id.reset(token)


class RequestIdFilter(logging.Filter):
    """Adds `request_id` to every record ('-' outside a request)."""

    def filter(self, record: logging.LogRecord) -> bool:
        record.request_id = _request_id.get() or "-"
        return True


class JsonFormatter(logging.Formatter):
    """One JSON object per line, for log shippers."""

    def format(self, record: logging.LogRecord) -> str:
        out = {
            "time": datetime.fromtimestamp(record.created, UTC).isoformat(timespec="milliseconds"),
            "level": record.levelname,
            "logger": record.name,
            "message": record.getMessage(),
            "request_id": getattr(record, "request_id", "-"),
        }
        for key in ("method", "path", "status", "duration_ms", "client"):
            if hasattr(record, key):
                out[key] = getattr(record, key)
        if record.exc_info:
            out["exc_info"] = self.formatException(record.exc_info)
        return json.dumps(out)


TEXT_FORMAT = "%(asctime)s %(levelname)s %(name)s [%(request_id)s] %(message)s"


def configure_logging(level: str, fmt: str) -> None:
    """Route the `app` logger, and uvicorn's own, to stderr in the chosen format (idempotent).

    uvicorn's server messages (startup, shutdown, its errors) then come out in the same format
    as ours, one JSON object per line included; their level stays what uvicorn's log level set.
    uvicorn's access line too, where it is on: `python -m app` turns it off, since `app.access`
    logs every request already, with its id and duration.
    """
    handler = logging.StreamHandler(sys.stderr)
    handler.addFilter(RequestIdFilter())
    handler.setFormatter(JsonFormatter() if fmt == "json" else logging.Formatter(TEXT_FORMAT))
    logging.getLogger("app").setLevel(level)
    for name in ("app", "uvicorn"):  # uvicorn.error propagates to "uvicorn"
        logger = logging.getLogger(name)
        logger.propagate = False
        logger.handlers = [handler]
    access = logging.getLogger("uvicorn.access")
    if access.handlers:  # uvicorn's own config gave it a handler; it empties them when off
        access.handlers = [handler]
