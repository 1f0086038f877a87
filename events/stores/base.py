"""The event-store port. Every adapter passes the same contract tests (tests/events/test_store_contract.py).

Events travel as plain dicts of JSON primitives (the enriched event of docs/api.md,
"Stored events", plus `tenant`); timestamps are ISO 8601 strings in UTC with a `Z`.
"""

from __future__ import annotations

import base64
import binascii
import json
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Protocol

from cloudscale_project.errors import StoreUnavailable  # noqa: F401 - re-exported: the port raises it
from events.shape import PUBLIC_FIELDS, EnrichedEvent, public_view  # noqa: F401 - re-exported

Event = EnrichedEvent


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


# Steps a store runs inside its write's transaction, on the events that write newly stored.
NewEventsHook = Callable[[list[Event]], None]


class StoreWithSteps(EventStore, Protocol):
    """A store that writes to the database the pipeline's steps write to (the ORM store), and says
    so with `runs_steps_in_transaction = True`: its `write_many` then takes `then`, called inside
    the write's transaction with the events it newly stored. What `then` writes commits with those
    rows or not at all, so the stored row itself records that the step ran for its event."""

    runs_steps_in_transaction: bool

    def write_many(self, events: Sequence[Event], *, then: NewEventsHook | None = None) -> set[str]: ...
