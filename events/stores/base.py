"""The event-store port. Every adapter passes the same contract tests (tests/events/test_store_contract.py).

Events travel as plain dicts of JSON primitives (the enriched event of CONTRACT section 4,
plus `tenant`); timestamps are ISO 8601 strings in UTC with a `Z`.
"""

from __future__ import annotations

import base64
import binascii
import json
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any, Protocol

Event = dict[str, Any]

# The fields a stored event shows to API clients, in the order they are rendered.
PUBLIC_FIELDS = (
    "event_id",
    "event_type",
    "user_id",
    "session_id",
    "properties",
    "timestamp",
    "client_timestamp",
    "sent_at",
    "received_at",
    "skew_corrected",
    "timestamp_clamped",
    "ip",
    "user_agent",
    "correlation_id",
    "custom",
    "context",
)


class StoreUnavailable(Exception):
    """A transient store failure (throttling, 5xx, connection): retry later, never drop.

    `retry_after` is the store's own hint in seconds, when it gave one.
    """

    def __init__(self, message: str, *, retry_after: float | None = None) -> None:
        super().__init__(message)
        self.retry_after = retry_after


class InvalidCursor(ValueError):
    pass


@dataclass(frozen=True)
class EventPage:
    results: list[Event]
    next_cursor: str | None


def encode_cursor(timestamp: str, event_id: str) -> str:
    raw = json.dumps([timestamp, event_id], separators=(",", ":")).encode()
    return base64.urlsafe_b64encode(raw).decode().rstrip("=")


def decode_cursor(cursor: str) -> tuple[str, str]:
    """(timestamp, event_id) of the last item of the previous page; newest first, ties by id."""
    try:
        raw = base64.urlsafe_b64decode(cursor + "=" * (-len(cursor) % 4))
        timestamp, event_id = json.loads(raw)
    except (binascii.Error, ValueError, TypeError, UnicodeDecodeError):
        raise InvalidCursor("cursor is not one this API returned") from None
    if not isinstance(timestamp, str) or not isinstance(event_id, str):
        raise InvalidCursor("cursor is not one this API returned")
    return timestamp, event_id


def public_view(event: Event) -> Event:
    view = {name: event.get(name) for name in PUBLIC_FIELDS}
    # Native events carry neither field: they are not custom and have no SDK context.
    view["custom"] = bool(view["custom"])
    view["context"] = view["context"] or None
    return view


class EventStore(Protocol):
    name: str

    def write_many(self, events: Sequence[Event]) -> set[str]:
        """Store each event once per (tenant, event_id); return the ids newly stored by this call.

        Idempotent: writing an already stored event changes nothing and does not return its id.
        Raises StoreUnavailable for transient failures (the caller retries the whole batch).
        """

    def get(self, *, tenant: str, event_id: str) -> Event | None: ...

    def query(
        self,
        *,
        tenant: str,
        event_type: str | None = None,
        user_id: str | None = None,
        since: datetime | None = None,
        until: datetime | None = None,
        limit: int = 100,
        cursor: str | None = None,
    ) -> EventPage:
        """The tenant's events by event `timestamp`, newest first; `since` inclusive, `until` exclusive."""

    def count_stored_by_hour(self, *, tenant: str, since: datetime, until: datetime) -> dict[datetime, int]:
        """How many events were stored per hour of `received_at` (for the loss ledger)."""

    def purge_expired(self, *, older_than: datetime) -> int:
        """Delete events received before `older_than`; return how many (TTL stores may return 0)."""

    def ping(self) -> None:
        """Raise if the store does not answer."""
