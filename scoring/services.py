"""Scoring step of the pipeline: add each event's contribution to its user's score exactly once.

Two ways to know an event was applied, both committing with the score change:
- **On the ORM store** (`apply_stored`): the pipeline runs the step inside the store's write
  transaction with the events that write newly stored. The stored row is the record; a redelivered
  event is not new to the store and is not scored again (docs/decisions.md, "Scoring inside the
  store's transaction").
- **Elsewhere** (the step called, `scores_apply`), in one transaction per batch: insert a
  ScoredEvent marker per event, `ON CONFLICT DO NOTHING RETURNING event_id` (the rows returned are
  the events mine to apply; the row carries this call's token for operators), then apply those.

Applying is one multi-row upsert that ADDS the per-user deltas (`score = score + excluded.score`,
counts likewise). Concurrent workers: the unique index makes the second inserter of an event (row
or marker) wait and then skip it; the upsert's row lock makes the second updater of a user add to
the committed value (PostgreSQL re-reads the row under READ COMMITTED; SQLite's IMMEDIATE
transactions serialise writers). Users and events are written in sorted order so two batches take
row locks in the same order and cannot deadlock each other.

Why SQL and not a Redis script: the score lives in the database the API and admin read, and a
Redis record could not commit atomically with a database update.
"""

from __future__ import annotations

import functools
import uuid
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import Any

from django.conf import settings
from django.db import connection, transaction

from cloudscale_project.rawsql import array_parameter, bulk_cursor, insert_rows
from cloudscale_project.timeutil import parse_iso, utcnow
from scoring.models import ScoredEvent, UserScore
from scoring.weights import WEIGHTS, contribution_at_epoch

# Rows per INSERT statement: well under SQLite's 32,766 bound variables and PostgreSQL's 65,535.
_UPSERT_ROWS = 500
_COUNT_COLUMNS = [f"{event_type}_count" for event_type in WEIGHTS]
_MARKER_FIELDS = ("tenant", "event_id", "batch", "applied_at")


@dataclass
class _UserDelta:
    score: float = 0.0
    events: int = 0
    counts: dict[str, int] = field(default_factory=dict)
    last_event_at: datetime | None = None


class ScoreStep:
    """Pipeline step: add each event's contribution to its user's score exactly once.

    Called, it keeps its own record of applied events (the markers). Where the event store writes
    in this database, the pipeline calls `apply_stored` instead, inside the store's transaction
    with the events that transaction newly stored: the store's unique row is then the record, and
    no marker is written (docs/decisions.md, "Scoring inside the store's transaction").
    """

    def __call__(self, *, tenant: str, events: Sequence[Mapping[str, Any]]) -> None:
        scores_apply(tenant=tenant, events=events)

    def apply_stored(self, *, tenant: str, events: Sequence[Mapping[str, Any]]) -> None:
        scores_apply_stored(tenant=tenant, events=events)


score_apply_batch = ScoreStep()


def scores_apply(*, tenant: str, events: Sequence[Mapping[str, Any]]) -> int:
    """Add the contributions of the events not applied before; return how many were applied."""
    by_id = {str(event["event_id"]): event for event in events}
    if not by_id:
        return 0
    token = uuid.uuid4().hex
    now = utcnow()
    event_ids = sorted(by_id)
    with transaction.atomic():
        mine = _markers_insert(tenant=tenant, event_ids=event_ids, token=token, now=now)
        _scores_add(
            tenant=tenant,
            deltas=_deltas(by_id[event_id] for event_id in event_ids if event_id in mine),
            now=now,
        )
    return len(mine)


def scores_apply_stored(*, tenant: str, events: Sequence[Mapping[str, Any]]) -> int:
    """Add the contributions of events the caller's open transaction has just stored for the first
    time; return how many were applied. It must run inside that transaction: the stored row is
    what says the event was applied, so both commit or neither does. An event scored earlier by
    `scores_apply` (its marker exists: an older worker scored it before a store write that did
    not commit) is skipped, so a deployment that switches paths counts nothing twice."""
    by_id = {str(event["event_id"]): event for event in events}
    if not by_id:
        return 0
    scored = _markers_existing(tenant=tenant, event_ids=list(by_id))
    mine = sorted(event_id for event_id in by_id if event_id not in scored)
    _scores_add(tenant=tenant, deltas=_deltas(by_id[event_id] for event_id in mine), now=utcnow())
    return len(mine)


def _deltas(events: Iterable[Mapping[str, Any]]) -> dict[str, _UserDelta]:
    deltas: dict[str, _UserDelta] = {}
    for event in events:
        at = parse_iso(event["timestamp"])
        event_type = str(event["event_type"])
        delta = deltas.setdefault(str(event["user_id"]), _UserDelta())
        delta.score += contribution_at_epoch(event_type=event_type, at=at)
        delta.events += 1
        delta.counts[event_type] = delta.counts.get(event_type, 0) + 1
        delta.last_event_at = at if delta.last_event_at is None else max(delta.last_event_at, at)
    return deltas


def _markers_existing(*, tenant: str, event_ids: list[str]) -> set[str]:
    """The ids among `event_ids` that have a marker (read only: nothing is locked or written)."""
    quote = connection.ops.quote_name
    found: set[str] = set()
    table = quote(ScoredEvent._meta.db_table)
    with bulk_cursor() as cursor:
        if connection.vendor == "postgresql":
            cursor.execute(_marker_select_any(table), [tenant, event_ids])
            return {event_id for (event_id,) in cursor.fetchall()}
        for start in range(0, len(event_ids), _UPSERT_ROWS):
            chunk = event_ids[start : start + _UPSERT_ROWS]
            cursor.execute(_marker_select(table, len(chunk)), [tenant, *chunk])
            found.update(event_id for (event_id,) in cursor.fetchall())
    return found


@functools.lru_cache(maxsize=4)
def _marker_select_any(table: str) -> str:
    """PostgreSQL's: every id in one array parameter (see `rawsql.array_parameter`)."""
    ids = array_parameter("varchar")
    return f"SELECT event_id FROM {table} WHERE tenant = %s AND event_id = ANY({ids})"  # noqa: S608 - names are ours, values are parameters


@functools.lru_cache(maxsize=64)
def _marker_select(table: str, ids: int) -> str:
    placeholders = ", ".join(["%s"] * ids)
    return f"SELECT event_id FROM {table} WHERE tenant = %s AND event_id IN ({placeholders})"  # noqa: S608 - names are ours, values are parameters


def _markers_insert(*, tenant: str, event_ids: list[str], token: str, now: datetime) -> set[str]:
    """Insert the events' ScoredEvent markers; return the ids this call inserted (the new ones).

    Raw SQL rather than bulk_create plus a read-back: Django's per-value query building was most
    of this step's CPU, and RETURNING answers "which rows are mine" in the same statement (on
    PostgreSQL a concurrent inserter of the same event waits on the unique index, then skips it).
    """
    quote = connection.ops.quote_name
    applied_at = connection.ops.adapt_datetimefield_value(now)
    suffix = f"ON CONFLICT ({quote('tenant')}, {quote('event_id')}) DO NOTHING RETURNING {quote('event_id')}"
    mine: set[str] = set()
    with bulk_cursor() as cursor:
        for start in range(0, len(event_ids), _UPSERT_ROWS):
            chunk = event_ids[start : start + _UPSERT_ROWS]
            rows = [(tenant, event_id, token, applied_at) for event_id in chunk]
            cursor.execute(*insert_rows(ScoredEvent, _MARKER_FIELDS, rows, suffix=suffix))
            mine.update(event_id for (event_id,) in cursor.fetchall())
    return mine


def _scores_add(*, tenant: str, deltas: dict[str, _UserDelta], now: datetime) -> None:
    """One INSERT ... ON CONFLICT DO UPDATE that adds the deltas (same SQL on PostgreSQL and SQLite)."""
    if not deltas:
        return
    quote = connection.ops.quote_name
    adapt = connection.ops.adapt_datetimefield_value
    table = quote(UserScore._meta.db_table)
    additive = ["score_at_epoch", "events_counted", *_COUNT_COLUMNS]
    columns = ["tenant", "user_id", *additive, "last_event_at", "created_at", "updated_at"]
    updates = [f"{quote(c)} = {table}.{quote(c)} + excluded.{quote(c)}" for c in additive]
    last = quote("last_event_at")
    updates.append(
        f"{last} = CASE WHEN excluded.{last} > {table}.{last} THEN excluded.{last} ELSE {table}.{last} END"
    )
    updates.append(f"{quote('updated_at')} = excluded.{quote('updated_at')}")
    suffix = f"ON CONFLICT ({quote('tenant')}, {quote('user_id')}) DO UPDATE SET {', '.join(updates)}"
    users = sorted(deltas)
    with bulk_cursor() as cursor:
        for start in range(0, len(users), _UPSERT_ROWS):
            rows = []
            for user_id in users[start : start + _UPSERT_ROWS]:
                delta = deltas[user_id]
                rows.append(
                    (
                        tenant,
                        user_id,
                        delta.score,
                        delta.events,
                        *[delta.counts.get(event_type, 0) for event_type in WEIGHTS],
                        adapt(delta.last_event_at),
                        adapt(now),
                        adapt(now),
                    )
                )
            cursor.execute(*insert_rows(UserScore, columns, rows, suffix=suffix))


def scored_events_purge(*, now: datetime | None = None) -> int:
    """Forget idempotency markers past the event retention: the events themselves are gone by then."""
    cutoff = (now or utcnow()) - timedelta(days=settings.EVENT_RETENTION_DAYS)
    deleted, _ = ScoredEvent.objects.filter(applied_at__lt=cutoff).delete()
    return deleted
