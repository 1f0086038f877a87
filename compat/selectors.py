"""Reads of ingestion warnings: a tenant's, newest first, cursor-paginated, within the retention."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import timedelta

from django.conf import settings
from django.db.models import Q

from cloudscale_project.timeutil import isoformat_z, parse_iso, utcnow
from compat.models import IngestionWarning
from events.stores.base import InvalidCursor, decode_cursor, encode_cursor

WarningRow = dict[str, object]


@dataclass(frozen=True)
class WarningPage:
    results: list[WarningRow]
    next_cursor: str | None


def _row(warning: IngestionWarning) -> WarningRow:
    return {
        "time": isoformat_z(warning.time),
        "protocol": warning.protocol,
        "event_name": warning.event_name,
        "event_id": warning.event_id or None,
        "code": warning.code,
        "field": warning.field or None,
        "message": warning.message,
        "correlation_id": warning.correlation_id or None,
    }


def warnings_list(
    *, tenant: str, limit: int, cursor: str | None = None, code: str | None = None
) -> WarningPage:
    """The cursor is the events' format, (time, id) of the last row: ids are unique, times are not."""
    rows = IngestionWarning.objects.filter(
        tenant=tenant, time__gte=utcnow() - timedelta(days=settings.COMPAT_WARNING_RETENTION_DAYS)
    )
    if code:
        rows = rows.filter(code=code)
    if cursor:
        after_time, after_id = decode_cursor(cursor)
        try:
            after, last_id = parse_iso(after_time), int(after_id)
        except ValueError:
            raise InvalidCursor("cursor is not one this API returned") from None
        rows = rows.filter(Q(time__lt=after) | Q(time=after, id__lt=last_id))
    page = list(rows.order_by("-time", "-id")[: limit + 1])
    next_cursor = None
    if len(page) > limit:
        last = page[limit - 1]
        next_cursor = encode_cursor(isoformat_z(last.time), str(last.id))
    return WarningPage(results=[_row(w) for w in page[:limit]], next_cursor=next_cursor)
