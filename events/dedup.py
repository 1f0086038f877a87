"""The API's memory of event ids (CONTRACT section 4): a repeat within 24 h is a duplicate.

Ids are *reserved* before publishing (SET NX with a short TTL) and *confirmed* (TTL raised to the
dedup window) only after the broker has the message; a failed publish releases them, so a client's
retry after a 503 is accepted, not called a duplicate. Concurrent requests carrying the same id
race on SET NX: exactly one wins.
"""

from __future__ import annotations

from collections.abc import Sequence
from functools import cache

import redis
from django.conf import settings

# Long enough to cover the publish with its retries; a crashed API process frees the id after it.
RESERVATION_SECONDS = 60


@cache
def _client() -> redis.Redis:
    return redis.Redis.from_url(settings.REDIS_URL, socket_timeout=2, socket_connect_timeout=2)


def _key(tenant: str, event_id: str) -> str:
    return f"seen:{tenant}:{event_id}"


def reserve_event_ids(*, tenant: str, event_ids: Sequence[str]) -> list[bool]:
    """For each id, True if this call reserved it (new), False if seen or reserved before.

    An id repeated within `event_ids` is new only at its first position.
    """
    if not event_ids:
        return []
    pipe = _client().pipeline(transaction=False)
    for event_id in event_ids:
        pipe.set(_key(tenant, event_id), "1", nx=True, ex=RESERVATION_SECONDS)
    return [bool(result) for result in pipe.execute()]


def confirm_event_ids(*, tenant: str, event_ids: Sequence[str]) -> None:
    pipe = _client().pipeline(transaction=False)
    for event_id in event_ids:
        pipe.expire(_key(tenant, event_id), settings.DEDUP_WINDOW_SECONDS)
    pipe.execute()


def release_event_ids(*, tenant: str, event_ids: Sequence[str]) -> None:
    if event_ids:
        _client().delete(*[_key(tenant, event_id) for event_id in event_ids])
