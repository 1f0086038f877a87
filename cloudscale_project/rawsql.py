"""A cursor for the workers' bulk statements that skips Django's SQLite placeholder rewrite.

Django's SQLite cursor turns every `%s` into `?` with a regular expression on each execute; a
500-row INSERT of the event store carries 8,500 placeholders, and the rewrite took 1.8 ms of it
(3.6 µs per event, per statement; docs/benchmarks.md, "Levers, third round"). Here the same SQL
(written with `%s`, as for PostgreSQL) runs on SQLite's own DB-API cursor after a `str.replace`
that is cached per statement (0.03 ms). Errors are still Django's (`OperationalError`,
`IntegrityError`), and the statements still run in the connection's current transaction
(`transaction.atomic()` drives the same sqlite3 connection).

What is given up, on SQLite only: these statements are not in `connection.queries` under DEBUG.
When the connection has execute wrappers (the SQL spans of tracing), Django's cursor is used so
that they see every statement. PostgreSQL always gets Django's own cursor: psycopg takes `%s` as
it is, so there is nothing to save.
"""

from __future__ import annotations

import functools
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from typing import Any, Protocol

from django.db import connection


class SqlCursor(Protocol):
    """What the bulk statements use of a cursor: `%s` placeholders, positional parameters."""

    def execute(self, sql: str, params: Sequence[Any]) -> Any: ...

    def fetchall(self) -> list[Any]: ...


@functools.lru_cache(maxsize=64)
def _qmark(sql: str) -> str:
    """`sql` in sqlite3's placeholder style. Cached: a worker sends the same few statements (one per
    row count) over and over, and hashing the text costs a tenth of replacing in it."""
    return sql.replace("%s", "?")


class _QmarkCursor:
    """sqlite3's cursor behind the `%s` style (the SQL here never holds a literal `%`)."""

    def __init__(self, raw: Any) -> None:
        self._raw = raw

    def execute(self, sql: str, params: Sequence[Any]) -> Any:
        return self._raw.execute(_qmark(sql), params)

    def fetchall(self) -> list[Any]:
        rows: list[Any] = self._raw.fetchall()
        return rows


@contextmanager
def bulk_cursor() -> Iterator[SqlCursor]:
    """A cursor of the default connection for hot bulk statements (see the module's docstring)."""
    if connection.vendor != "sqlite" or connection.execute_wrappers:
        with connection.cursor() as cursor:
            yield cursor
        return
    connection.ensure_connection()
    with connection.wrap_database_errors:
        raw = connection.connection.cursor()
        try:
            yield _QmarkCursor(raw)
        finally:
            raw.close()
