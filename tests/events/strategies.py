"""Hypothesis strategies shared by the API's property tests: text with every Unicode character (NUL
included), and times across years 1..9999 with offsets, as ISO 8601 text or garbage."""

from __future__ import annotations

import base64
import json
from datetime import UTC, datetime, timedelta, timezone

from hypothesis import strategies as st

text = st.text(st.characters(codec="utf-8"), max_size=20)
short_text = st.text(st.characters(codec="utf-8"), min_size=1, max_size=12)
# NUL is drawn by `text` too, but rarely: PostgreSQL cannot store it, so it gets a strategy of its own.
with_nul = text.map(lambda s: s[:3] + "\x00" + s[3:])

_ZONES = [timezone(timedelta(minutes=m)) for m in (-23 * 60 - 59, -60, 60, 14 * 60)] + [UTC]

times = st.one_of(
    st.builds(
        lambda moment, zone: moment.replace(tzinfo=zone),
        st.datetimes(min_value=datetime(1, 1, 1), max_value=datetime(9999, 12, 31, 23, 59, 59)),
        st.sampled_from(_ZONES),
    ),
    st.datetimes(min_value=datetime(2026, 1, 1), max_value=datetime(2027, 1, 1)).map(
        lambda d: d.replace(tzinfo=UTC)
    ),
)


def _with_z(moment: datetime) -> str:
    text = moment.isoformat()
    return text.removesuffix("+00:00") + "Z" if moment.utcoffset() == timedelta(0) else text


edge_time_texts = st.sampled_from(
    [
        "0001-01-01T00:00:00Z",
        "0001-01-01T00:00:00+01:00",  # before year 1 in UTC
        "9999-12-31T23:59:59-01:00",  # after year 9999 in UTC
        "0999-06-01T12:00:00Z",
        "2026-11-26",
        "2026-W48-4T10:00",
    ]
)
time_texts = st.one_of(times.map(datetime.isoformat), times.map(_with_z), edge_time_texts, text)


def cursor_of(timestamp: str, event_id: str) -> str:
    """A cursor in the API's own encoding, around any (timestamp, event id)."""
    return base64.urlsafe_b64encode(json.dumps([timestamp, event_id]).encode()).decode().rstrip("=")


cursors = st.one_of(
    st.builds(cursor_of, edge_time_texts, st.uuids().map(str)),
    st.builds(cursor_of, time_texts, text | with_nul),
    st.builds(lambda raw: base64.urlsafe_b64encode(raw).decode(), st.binary(max_size=40)),
    text,
)
