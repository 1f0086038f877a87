"""The enriched event, defined once: what the API publishes, the pipeline checks and the stores keep.

`EnrichedEvent` types it for mypy; `FIELDS` says, per field, what it holds and how long it may be.
Enrichment builds the TypedDict; the pipeline's checks, the ORM model's columns and row builders,
the Cosmos item, the public view and the read API's schema are all derived from `FIELDS`, so a new
field or a new length is one edit here (plus a migration for the ORM columns). Pure: no I/O.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from enum import StrEnum
from typing import Any, NotRequired, TypedDict

from cloudscale_project.timeutil import isoformat_z, parse_iso


class EnrichedEvent(TypedDict):
    """One event as it travels in a broker message and as a store returns it (times: ISO 8601, UTC, Z)."""

    tenant: str
    event_id: str
    event_type: str
    user_id: str
    session_id: str | None
    properties: dict[str, Any]
    timestamp: str
    client_timestamp: str | None
    sent_at: str | None
    received_at: str
    skew_corrected: bool
    timestamp_clamped: bool
    ip: str | None
    user_agent: str | None
    correlation_id: str | None
    # Only events of the SDK-compatible endpoints (compat/) carry these; stores read them back always.
    custom: NotRequired[bool]
    context: NotRequired[dict[str, Any] | None]


class Kind(StrEnum):
    TEXT = "text"  # a string kept as sent (within max_length)
    TIME = "time"  # an ISO 8601 time, normalised to UTC with a Z
    FLAG = "flag"  # a boolean
    JSON = "json"  # a JSON object


@dataclass(frozen=True)
class EventField:
    name: str
    kind: Kind
    required: bool
    max_length: int = 0  # TEXT and TIME: the longest value a store keeps (0: not a string)
    # Cut to max_length instead of refused (a user agent is context, not data worth a dead letter).
    truncate: bool = False
    help: str = ""


FIELDS: tuple[EventField, ...] = (
    EventField("event_id", Kind.TEXT, True, 64, help="The idempotency key within the tenant."),
    EventField(
        "event_type", Kind.TEXT, True, 200, help="A catalog type or, when `custom`, the event's own name."
    ),
    EventField("user_id", Kind.TEXT, True, 128),
    EventField("session_id", Kind.TEXT, False, 128),
    EventField("properties", Kind.JSON, True),
    EventField("timestamp", Kind.TIME, True, 64, help="Event time, corrected for client clock skew."),
    EventField("client_timestamp", Kind.TEXT, False, 64, help="The timestamp as sent."),
    EventField("sent_at", Kind.TEXT, False, 64, help="The client's clock at send time, as sent."),
    EventField("received_at", Kind.TIME, True, 64, help="Server time of arrival at the API."),
    EventField("skew_corrected", Kind.FLAG, False, help="The timestamp was corrected by sent_at."),
    EventField("timestamp_clamped", Kind.FLAG, False, help="The timestamp was > 23 h ahead."),
    EventField("ip", Kind.TEXT, False, 64, help="The client's address."),
    EventField("user_agent", Kind.TEXT, False, 512, truncate=True),
    EventField("correlation_id", Kind.TEXT, False, 64),
    EventField(
        "custom", Kind.FLAG, False, help="A custom event: a name outside the catalog (SDK endpoints)."
    ),
    EventField("context", Kind.JSON, False, help="The SDK's context (≤ 8 KiB), for events sent through one."),
)
FIELD: Mapping[str, EventField] = {field.name: field for field in FIELDS}

# What a stored event shows to API clients, in this order (the tenant is implied by the key).
PUBLIC_FIELDS: tuple[str, ...] = tuple(field.name for field in FIELDS)


def max_length(name: str) -> int:
    """The longest value of a string field: the ORM model's column sizes come from here."""
    return FIELD[name].max_length


def _normalise_value(field: EventField, value: Any) -> Any:
    if field.kind is Kind.TIME:
        return isoformat_z(parse_iso(value))
    if field.kind is Kind.FLAG:
        return bool(value)
    if field.kind is Kind.JSON:
        return value or ({} if field.required else None)
    if field.truncate and value:
        value = value[: field.max_length]
    return value if field.required else (value or None)


def normalised(event: Mapping[str, Any]) -> EnrichedEvent:
    """The event as every store keeps it: times in UTC with a Z, empty optional text as None,
    flags as booleans, truncated fields cut. Both stores read back exactly this."""
    out: dict[str, Any] = {"tenant": event["tenant"]}
    for field in FIELDS:
        out[field.name] = _normalise_value(field, event.get(field.name))
    return out  # type: ignore[return-value]  # built from FIELDS, which mirrors EnrichedEvent


def public_view(event: Mapping[str, Any]) -> dict[str, Any]:
    view = {name: event.get(name) for name in PUBLIC_FIELDS}
    # Events of the native endpoints carry neither: they are not custom and have no SDK context.
    view["custom"] = bool(view["custom"])
    view["context"] = view["context"] or None
    return view


def checked_strings() -> tuple[tuple[str, bool, int], ...]:
    """(name, required, max length) of the string fields a worker must check before a store write:
    an over-long value is a dead letter, not a database error that fails a whole batch."""
    return tuple(
        (field.name, field.required, field.max_length)
        for field in FIELDS
        if field.kind in {Kind.TEXT, Kind.TIME} and not field.truncate and field.name != "event_type"
    )


TIME_FIELDS: tuple[str, ...] = tuple(field.name for field in FIELDS if field.kind is Kind.TIME)
