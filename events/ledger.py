"""The per-tenant loss ledger (docs/api.md, "Loss ledger"): proof that nothing accepted was lost.

Per hour of `received_at`:
- received, accepted, duplicate, rejected, rate_limited: counted by the API where it decides, in
  Redis, `received` and the outcome in one MULTI so the two never disagree;
- stored: counted from the event store itself (idempotent by construction: a redelivered event is
  one row/item);
- dead_lettered: counted from the dead-letter table (pending or discarded, not requeued);
- pending = accepted - stored - dead_lettered: accepted events still in the broker or a retry.
"""

from __future__ import annotations

from collections.abc import Iterator
from datetime import UTC, datetime, timedelta

import redis

from cloudscale_project.state import state_redis
from cloudscale_project.timeutil import hour_floor, isoformat_z

API_OUTCOMES = ("accepted", "duplicate", "rejected", "rate_limited")
FIELDS = ("received", *API_OUTCOMES, "stored", "dead_lettered", "pending")
# Kept a little longer than the events themselves, so the ledger outlives the retention window.
_TTL_SECONDS = 40 * 24 * 3600
MAX_RANGE = timedelta(days=31)
_LAST_HOUR = datetime.max.replace(minute=0, second=0, microsecond=0, tzinfo=UTC)


_client = state_redis  # one client (and connection pool) per process


def _key(tenant: str, hour: datetime) -> str:
    return f"ledger:{tenant}:{hour.strftime('%Y-%m-%dT%H')}"


def ledger_record(
    *, tenant: str, received_at: datetime, counts: dict[str, int], pipe: redis.client.Pipeline | None = None
) -> None:
    """Count one request's events: each lands in exactly one API outcome.

    With `pipe` (a MULTI pipeline on REDIS_URL) the counts are only queued on it, so the caller
    can commit them together with other state (the API confirms its dedup ids in the same MULTI).
    """
    unknown = set(counts) - set(API_OUTCOMES)
    if unknown:
        raise ValueError(f"not API outcomes: {sorted(unknown)}")
    total = sum(counts.values())
    if total == 0:
        return
    key = _key(tenant, hour_floor(received_at))
    own = pipe is None
    pipe = _client().pipeline(transaction=True) if pipe is None else pipe
    pipe.hincrby(key, "received", total)
    for outcome, n in counts.items():
        if n:
            pipe.hincrby(key, outcome, n)
    pipe.expire(key, _TTL_SECONDS)
    if own:
        pipe.execute()


def _hours(since: datetime, until: datetime) -> Iterator[datetime]:
    hour = hour_floor(since)
    while hour < until:
        yield hour
        if hour >= _LAST_HOUR:
            return
        hour += timedelta(hours=1)


def ledger_report(*, tenant: str, since: datetime, until: datetime) -> dict[str, object]:
    """Hours with any activity in [since, until), and the totals over them."""
    from events.deadletters import dead_lettered_by_hour
    from events.stores import get_event_store

    hours = list(_hours(since, until)) if since < until else []
    pipe = _client().pipeline(transaction=False)
    for hour in hours:
        pipe.hgetall(_key(tenant, hour))
    api_counts = pipe.execute()
    start = hour_floor(since)
    end = until if not hours or hours[-1] >= _LAST_HOUR else hours[-1] + timedelta(hours=1)
    stored = {hour_floor(h): n for h, n in get_event_store().count_stored_by_hour(
        tenant=tenant, since=start, until=end).items()}  # fmt: skip
    dead = {hour_floor(h): n for h, n in dead_lettered_by_hour(tenant=tenant, since=start, until=end).items()}

    results: list[dict[str, object]] = []
    totals = dict.fromkeys(FIELDS, 0)
    for hour, raw in zip(hours, api_counts, strict=True):
        row = {name: int(raw.get(name.encode(), 0)) for name in ("received", *API_OUTCOMES)}
        row["stored"] = stored.get(hour, 0)
        row["dead_lettered"] = dead.get(hour, 0)
        row["pending"] = row["accepted"] - row["stored"] - row["dead_lettered"]
        if any(row.values()):
            for name in FIELDS:
                totals[name] += row[name]
            results.append({"hour": isoformat_z(hour).replace(".000000Z", "Z"), **row})
    return {"results": results, "totals": totals}
