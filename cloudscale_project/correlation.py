"""The correlation id of the work in hand, carried from the HTTP request to logs, messages and traces."""

from __future__ import annotations

import uuid
from contextvars import ContextVar

HEADER = "X-Correlation-ID"
_current: ContextVar[str] = ContextVar("correlation_id", default="")


def get_correlation_id() -> str:
    return _current.get()


def set_correlation_id(value: str) -> None:
    _current.set(value)


def new_correlation_id() -> str:
    return str(uuid.uuid4())


def parse_correlation_id(raw: str | None) -> str | None:
    """Accept a client's id only if it is a UUID: anything else could smuggle junk into logs."""
    if not raw or len(raw) > 64:
        return None
    try:
        return str(uuid.UUID(raw.strip()))
    except ValueError:
        return None
