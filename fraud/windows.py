"""Where the rules' sliding windows live: state shared by every worker.

Redis adapter: one sorted set per (tenant, rule, subject), member = the event (its id first, so a
redelivered event is the same member and is not counted twice), score = its event time. A whole
batch is one MULTI/EXEC round trip: add the batch's events, read back everything within one window
of them, trim, set the TTL. Because each pipeline adds before it reads and runs atomically, of two
workers adding to the same subject at once the later one always sees both sets of events.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from functools import cache
from typing import Protocol

import orjson
import redis
from django.conf import settings

from fraud.rules import Entry

_KEY = "fraud:{tenant}:{rule}:{subject}"


@dataclass(frozen=True)
class WindowUpdate:
    """New events of one (rule, subject), and how much of its history the evaluation needs."""

    tenant: str
    rule: str
    subject: str
    entries: Sequence[Entry]
    window_seconds: int


class FraudWindowStore(Protocol):
    def add_and_read(self, *, updates: Sequence[WindowUpdate]) -> list[list[Entry]]:
        """Record the new entries; return, per update, all entries within one window of them, sorted."""
        ...


def _member(entry: Entry) -> bytes:
    return orjson.dumps([entry.event_id, entry.user_id, entry.event_type])


def _entry(member: bytes, score: float) -> Entry:
    event_id, user_id, event_type = orjson.loads(member)
    return Entry(at=score, event_id=event_id, user_id=user_id, event_type=event_type)


class RedisFraudWindows:
    def __init__(self, client: redis.Redis, *, lateness_seconds: int) -> None:
        self._client = client
        # How far behind the newest event of a subject an event may arrive and still be judged
        # against a complete window; older entries are trimmed so a busy subject stays bounded.
        self._lateness = lateness_seconds

    def add_and_read(self, *, updates: Sequence[WindowUpdate]) -> list[list[Entry]]:
        pipe = self._client.pipeline(transaction=True)
        for update in updates:
            key = _KEY.format(tenant=update.tenant, rule=update.rule, subject=update.subject)
            times = [e.at for e in update.entries]
            window = update.window_seconds
            pipe.zadd(key, {_member(e): e.at for e in update.entries})
            pipe.zrangebyscore(key, min(times) - window, max(times) + window, withscores=True)
            pipe.zremrangebyscore(key, "-inf", f"({max(times) - window - self._lateness}")
            pipe.expire(key, window + self._lateness)
        replies = pipe.execute()
        windows: list[list[Entry]] = []
        for index in range(len(updates)):
            rows = replies[index * 4 + 1]
            windows.append(sorted((_entry(m, s) for m, s in rows), key=lambda e: (e.at, e.event_id)))
        return windows


@cache
def _client() -> redis.Redis:
    return redis.Redis.from_url(settings.REDIS_URL, socket_timeout=5, socket_connect_timeout=3)


def get_fraud_window_store() -> FraudWindowStore:
    return RedisFraudWindows(_client(), lateness_seconds=settings.FRAUD_LATENESS_SECONDS)
