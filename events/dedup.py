"""The API's memory of event ids (docs/api.md, "Idempotency"): a repeat within 24 h is a duplicate.

Ids are *reserved* before publishing (SET NX of a "reserved" marker with a short TTL) and
*confirmed* (the marker becomes "published", with the dedup window as TTL) only after the broker
has the message; a failed publish releases them, so a client's retry after a 503 is accepted, not
called a duplicate. Concurrent requests carrying the same id race on SET NX: exactly one wins.

Only a confirmed id makes a repeat a duplicate. An id that is reserved but not confirmed is in
flight: another request is publishing it, or one whose publish failed could not release it (the
broker and this state are often the same Redis, so a broker outage also fails the release). Its
publish may still fail, so calling the repeat a duplicate could acknowledge an event that never
reaches the broker; the repeat is refused with a 503 instead, until the reservation is confirmed
or expires (found by the fault suite, tests/faults/).
"""

from __future__ import annotations

import enum
from collections.abc import Sequence

import redis
from django.conf import settings

from cloudscale_project.state import state_redis

# Covers a publish with all its retries (3 attempts, socket timeouts of 3-5 s: under 20 s); a
# crashed API process or an unreleased failed publish frees the id after it.
RESERVATION_SECONDS = 60
_RESERVED = b"reserved"
# Confirmed ids hold "1", the value every id held before reservations were told apart: keys
# written by an older API process still read as confirmed.
_PUBLISHED = b"1"


class Claim(enum.Enum):
    NEW = "new"  # reserved by this call: publish, then confirm or release
    DUPLICATE = "duplicate"  # confirmed earlier (or repeated within this call): do not publish
    IN_FLIGHT = "in_flight"  # reserved by another request and not confirmed: retry later


_client = state_redis  # one client (and connection pool) per process


def seen_key(tenant: str, event_id: str) -> str:
    return f"seen:{tenant}:{event_id}"


def reserve_event_ids(*, tenant: str, event_ids: Sequence[str]) -> list[Claim]:
    """The claim of each id, by position. An id repeated within `event_ids` is a duplicate after
    its first position (unless the first is in flight elsewhere: then it is in flight too)."""
    unique = list(dict.fromkeys(event_ids))
    if not unique:
        return []
    pipe = _client().pipeline(transaction=False)
    for event_id in unique:
        key = seen_key(tenant, event_id)
        pipe.set(key, _RESERVED, nx=True, ex=RESERVATION_SECONDS)
        pipe.get(key)
    results = pipe.execute()
    claims: dict[str, Claim] = {}
    for index, event_id in enumerate(unique):
        won, value = results[2 * index], results[2 * index + 1]
        if won:
            claims[event_id] = Claim.NEW
        elif value is None or value == _RESERVED:  # None: the reservation expired just now
            claims[event_id] = Claim.IN_FLIGHT
        else:
            claims[event_id] = Claim.DUPLICATE
    out: list[Claim] = []
    seen: set[str] = set()
    for event_id in event_ids:
        claim = claims[event_id]
        out.append(Claim.DUPLICATE if event_id in seen and claim is Claim.NEW else claim)
        seen.add(event_id)
    return out


def confirm_event_ids(
    *, tenant: str, event_ids: Sequence[str], pipe: redis.client.Pipeline | None = None
) -> None:
    """Mark published ids as seen for the dedup window (queued only, when `pipe` is given)."""
    own = pipe is None
    pipe = _client().pipeline(transaction=False) if pipe is None else pipe
    for event_id in event_ids:
        pipe.set(seen_key(tenant, event_id), _PUBLISHED, ex=settings.DEDUP_WINDOW_SECONDS)
    if own:
        pipe.execute()


def release_event_ids(*, tenant: str, event_ids: Sequence[str]) -> None:
    if event_ids:
        _client().delete(*[seen_key(tenant, event_id) for event_id in event_ids])
