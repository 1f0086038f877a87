"""The ORM event store: SQLite by default, PostgreSQL in production-like runs."""

from __future__ import annotations

import functools
from collections.abc import Callable, Sequence
from datetime import datetime
from typing import Any

import orjson
from django.db import DatabaseError, OperationalError, connection, transaction
from django.db.models import Count, Q
from django.db.models.functions import TruncHour
from django.utils import timezone

from cloudscale_project.dbtime import db_time_converter
from cloudscale_project.rawsql import bulk_cursor, insert_rows
from cloudscale_project.timeutil import isoformat_z, parse_iso
from events.models import StoredEvent
from events.shape import FIELDS, EventField, Kind, normalised
from events.stores.base import (
    Event,
    EventPage,
    NewEventsHook,
    StoreUnavailable,
    decode_cursor,
    encode_cursor,
)

# One INSERT per chunk: 500 rows x 16 columns stays under SQLite's 32,766 bound parameters.
_INSERT_CHUNK = 500
# The table's columns of an event (events/shape.py), then the store's own.
_COLUMNS = ("tenant", *(field.name for field in FIELDS), "stored_at")
_ON_CONFLICT = "ON CONFLICT (tenant, event_id) DO NOTHING RETURNING tenant, event_id"


def _column_converter(field: EventField, vendor: str) -> Callable[[Any], Any]:
    """How an enriched field goes into its column, by the store's rules (events/shape.py,
    `normalised`) without the round trips through datetime: text columns are NOT NULL (empty for
    absent), times go in as text when they are canonical. Decided once per field, not per value."""
    if field.kind is Kind.TIME:
        return db_time_converter(vendor)
    if field.kind is Kind.JSON:
        if field.required:
            return lambda value: orjson.dumps(value or {}).decode()
        return lambda value: orjson.dumps(value).decode() if value else None
    if field.kind is Kind.FLAG:
        return bool
    if field.truncate:
        limit = field.max_length
        return lambda value: "" if value is None else value[:limit]
    return lambda value: "" if value is None else value


_Converters = tuple[tuple[str, Callable[[Any], Any]], ...]


@functools.cache
def _converters(vendor: str) -> _Converters:
    return tuple((field.name, _column_converter(field, vendor)) for field in FIELDS)


def _row(
    event: Event, stored_at: Any, converters: tuple[tuple[str, Callable[[Any], Any]], ...]
) -> tuple[Any, ...]:
    get = event.get
    return (event["tenant"], *[convert(get(name)) for name, convert in converters], stored_at)


def _as_event(row: StoredEvent) -> Event:
    values = {field.name: getattr(row, field.name) for field in FIELDS}
    for field in FIELDS:
        if field.kind is Kind.TIME:
            values[field.name] = isoformat_z(values[field.name])
    return normalised({"tenant": row.tenant, **values})


def _stored_tenants() -> list[str]:
    """The tenants that have stored events, each found by one index seek past the one before (a
    recursive query, SQLite and PostgreSQL alike) rather than a scan of every row: tenants that
    were deleted since are included, so their events expire too."""
    table = connection.ops.quote_name(StoredEvent._meta.db_table)
    sql = (
        f"WITH RECURSIVE stored(tenant) AS ("  # noqa: S608 (a table name, no values)
        f"SELECT MIN(tenant) FROM {table} "
        f"UNION ALL SELECT (SELECT MIN(tenant) FROM {table} WHERE tenant > stored.tenant) "
        f"FROM stored WHERE stored.tenant IS NOT NULL"
        f") SELECT tenant FROM stored WHERE tenant IS NOT NULL"
    )
    with connection.cursor() as cursor:
        cursor.execute(sql)
        return [tenant for (tenant,) in cursor.fetchall()]


class OrmEventStore:
    name = "orm"
    runs_steps_in_transaction = True  # StoreWithSteps: the steps write to this same database

    def write_many(self, events: Sequence[Event], *, then: NewEventsHook | None = None) -> set[str]:
        """INSERT … ON CONFLICT DO NOTHING RETURNING: the database itself says which rows are new,
        so two workers racing on a redelivered batch cannot both count an event as stored.

        `then` runs inside the same transaction with the events this call stored (StoreWithSteps).
        """
        if not events:
            return set()
        stored_at = connection.ops.adapt_datetimefield_value(timezone.now())
        converters = _converters(connection.vendor)
        new_ids: set[str] = set()
        try:
            with transaction.atomic():
                for start in range(0, len(events), _INSERT_CHUNK):
                    chunk = events[start : start + _INSERT_CHUNK]
                    rows = [_row(event, stored_at, converters) for event in chunk]
                    sql, params = insert_rows(StoredEvent, _COLUMNS, rows, suffix=_ON_CONFLICT)
                    with bulk_cursor() as cursor:
                        cursor.execute(sql, params)
                        new_ids.update(event_id for _tenant, event_id in cursor.fetchall())
                if then is not None:
                    then([event for event in events if event["event_id"] in new_ids])
        except OperationalError as exc:  # locked, connection lost, server gone: transient
            raise StoreUnavailable(f"database unavailable: {exc}") from exc
        return new_ids

    def get(self, *, tenant: str, event_id: str) -> Event | None:
        row = StoredEvent.objects.filter(tenant=tenant, event_id=event_id).first()
        return _as_event(row) if row else None

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
        rows = StoredEvent.objects.filter(tenant=tenant)
        if event_type:
            rows = rows.filter(event_type=event_type)
        if user_id:
            rows = rows.filter(user_id=user_id)
        if since:
            rows = rows.filter(timestamp__gte=since)
        if until:
            rows = rows.filter(timestamp__lt=until)
        if cursor:
            after_time, after_id = decode_cursor(cursor)
            after = parse_iso(after_time)
            # A range of time the indexes can seek to (the page after the cursor starts there,
            # not at the newest event), then the ties of the cursor's own time by id.
            rows = rows.filter(timestamp__lte=after).filter(Q(timestamp__lt=after) | Q(event_id__lt=after_id))
        page = list(rows.order_by("-timestamp", "-event_id")[: limit + 1])
        results = [_as_event(row) for row in page[:limit]]
        next_cursor = None
        if len(page) > limit:
            last = results[-1]
            next_cursor = encode_cursor(last["timestamp"], last["event_id"])
        return EventPage(results=results, next_cursor=next_cursor)

    def count_stored_by_hour(self, *, tenant: str, since: datetime, until: datetime) -> dict[datetime, int]:
        rows = (
            StoredEvent.objects.filter(tenant=tenant, received_at__gte=since, received_at__lt=until)
            .annotate(hour=TruncHour("received_at"))
            .values("hour")
            .annotate(n=Count("id"))
        )
        return {row["hour"]: row["n"] for row in rows}

    def purge_expired(self, *, older_than: datetime) -> int:
        """Tenant by tenant, each through the (tenant, received_at) index: the table keeps no
        index of arrival alone, which every insert would pay for and only this hourly purge read."""
        deleted = 0
        for tenant in _stored_tenants():
            count, _ = StoredEvent.objects.filter(tenant=tenant, received_at__lt=older_than).delete()
            deleted += count
        return deleted

    def ping(self) -> None:
        try:
            with connection.cursor() as cursor:
                cursor.execute("SELECT 1")
        except DatabaseError as exc:
            raise StoreUnavailable(f"database unavailable: {exc}") from exc
