"""Scoring step of the pipeline: add each event's contribution to its user's score exactly once.

Idempotency and atomicity, in one database transaction per batch (two statements):
1. insert a ScoredEvent row per event, `ON CONFLICT DO NOTHING RETURNING event_id`: the rows the
   database returns are the ones this call inserted, the events mine to apply (a redelivered event
   already has its row, so it is skipped); the row carries this call's token for operators;
2. one multi-row upsert that ADDS the per-user deltas of only those events
   (`score = score + excluded.score`, counts likewise).
The marker and the score change commit together or not at all, so a crash between them cannot
lose or double an event. Concurrent workers: the unique index makes the second inserter of an
event wait and then skip it; the upsert's row lock makes the second updater of a user add to the
committed value (PostgreSQL re-reads the row under READ COMMITTED; SQLite's IMMEDIATE transactions
serialise writers). Users and events are written in sorted order so two batches take row locks in
the same order and cannot deadlock each other.

Why SQL and not a Redis script: the score lives in the database the API and admin read, and a
Redis marker could not commit atomically with a database update.
"""

from __future__ import annotations

import uuid
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import Any

from django.conf import settings
from django.db import connection, transaction

from cloudscale_project.rawsql import bulk_cursor, insert_rows
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


def score_apply_batch(*, tenant: str, events: Sequence[Mapping[str, Any]]) -> None:
    """Pipeline step: apply the engagement-score contributions of a batch (idempotent per event)."""
    scores_apply(tenant=tenant, events=events)


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
        deltas: dict[str, _UserDelta] = {}
        for event_id in event_ids:
            if event_id not in mine:
                continue
            event = by_id[event_id]
            at = parse_iso(event["timestamp"])
            event_type = str(event["event_type"])
            delta = deltas.setdefault(str(event["user_id"]), _UserDelta())
            delta.score += contribution_at_epoch(event_type=event_type, at=at)
            delta.events += 1
            delta.counts[event_type] = delta.counts.get(event_type, 0) + 1
            delta.last_event_at = at if delta.last_event_at is None else max(delta.last_event_at, at)
        _scores_add(tenant=tenant, deltas=deltas, now=now)
    return len(mine)


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
