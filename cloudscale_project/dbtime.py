"""Event times as a DateTimeField column takes them, for raw INSERTs and WHEREs on hot paths.

Parsing the API's text into a datetime only for Django to format it again was most of a row's cost
in the event store and the cart step. The values here are exactly what Django's
`adapt_datetimefield_value` gives for the same time (so text comparisons on SQLite match rows the
ORM wrote): SQLite stores `str(naive UTC datetime)`, the same digits with a space for the "T" and
no fraction when it is zero; PostgreSQL parses the ISO text itself.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from datetime import datetime, timedelta
from typing import Any

from django.db import connection

from cloudscale_project.timeutil import parse_iso

# The form in which the API writes every event time (isoformat_z: UTC, microseconds, "Z").
CANONICAL_TIME = re.compile(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{6}Z")


def db_time(value: str) -> Any:
    """An event time as the column takes it, without a datetime in between when it is canonical."""
    return db_time_converter(connection.vendor)(value)


def db_time_converter(vendor: str) -> Callable[[str], Any]:
    """`db_time` for one database vendor, for loops over many rows: the vendor is looked up once
    (Django's connection proxy costs a thread-local lookup per attribute)."""
    fullmatch = CANONICAL_TIME.fullmatch

    def other(value: str) -> Any:
        return connection.ops.adapt_datetimefield_value(parse_iso(value))

    if vendor != "sqlite":

        def iso(value: str) -> Any:
            return value if fullmatch(value) else other(value)

        return iso

    def sqlite(value: str) -> Any:
        if not fullmatch(value):
            return other(value)
        if value.endswith(".000000Z"):
            return f"{value[:10]} {value[11:19]}"
        return f"{value[:10]} {value[11:26]}"

    return sqlite


def db_time_after(value: str, delta: timedelta) -> Any:
    """`value + delta` as the column takes it: one naive datetime instead of parse_iso's aware one
    and Django's conversion back to naive UTC (about a fifth of the cost)."""
    if CANONICAL_TIME.fullmatch(value):
        later = datetime.fromisoformat(value[:26]) + delta  # naive UTC
        if connection.vendor == "sqlite":
            return str(later)
        return later.isoformat(timespec="microseconds") + "Z"
    return connection.ops.adapt_datetimefield_value(parse_iso(value) + delta)
