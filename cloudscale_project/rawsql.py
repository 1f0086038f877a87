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
that they see every statement. On PostgreSQL psycopg takes `%s` as it is, so statements of scalar
parameters keep Django's own cursor; statements of array parameters go to a cursor that binds on
the server (`_PostgresBulkCursor`, below).

`insert_rows` writes the INSERT of many rows for both databases. On PostgreSQL a statement of many
rows sends one array per column through `unnest()` instead of a VALUES list of rows x columns
parameters: Django's psycopg cursor quotes each of those parameters into the SQL text, and the
server parses and plans each one. A 500-event store write cost 92 µs of worker CPU and 63 µs of
server CPU per event that way, and 37 and 36 µs through `unnest()` (docs/benchmarks.md, "Levers,
eighth round"). For a few rows the VALUES list is as cheap, so short inserts keep it. The arrays
go in binary (`%b`): Django's cursor would render each as a quoted literal, built element by
element in Python, which was 12 of the worker's 42 ms of a 500-event message; in binary the store
write's array dumping costs about 1.6 ms (docs/benchmarks.md, "Levers, thirty-third round").
"""

from __future__ import annotations

import functools
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from typing import Any, Protocol

from django.db import DEFAULT_DB_ALIAS, connection, connections
from django.db.models import Model

# On PostgreSQL, inserts of this many rows or more go through unnest() (see the module's docstring).
UNNEST_FROM_ROWS = 16


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
    """A cursor of the default connection for hot bulk statements (see the module's docstring).

    The connection is looked up once: each attribute read through Django's `connection` proxy looks
    it up again in the thread's connections (1.6 µs), five reads a call, about three calls a
    message."""
    db = connections[DEFAULT_DB_ALIAS]
    if db.vendor == "postgresql":
        db.ensure_connection()
        postgres = _PostgresBulkCursor(db)
        try:
            yield postgres
        finally:
            postgres.close()
        return
    if db.vendor != "sqlite" or db.execute_wrappers:
        with db.cursor() as cursor:
            yield cursor
        return
    db.ensure_connection()
    with db.wrap_database_errors:
        raw = db.connection.cursor()
        try:
            yield _QmarkCursor(raw)
        finally:
            raw.close()


class _PostgresBulkCursor:
    """Django's cursor for statements of scalar parameters, and a psycopg cursor that binds on the
    server for statements with binary array parameters (`%b`, see `array_parameter`), both on the
    connection's current transaction.

    Django's cursor binds on the client: it renders each parameter into the SQL text, an array as a
    quoted literal built element by element in Python. A server-binding cursor sends an array in
    binary instead, a few struct packs. Statements of scalars stay on Django's cursor: for a
    handful of rows its literals cost less than server-side parameters, on both sides (the
    thirtieth round's harness read 1.07x and 1.07x; docs/benchmarks.md). The server-binding cursor
    sits inside Django's cursor wrapper, so error translation, execute wrappers and the debug log
    see its statements too. It prepares nothing (Django opens the connection with
    `prepare_threshold` unset), so a transaction-pooling PgBouncer sees plain statements. It reads
    back text only (ids): the time-zone loader Django sets on its own cursors is not needed."""

    def __init__(self, db: Any) -> None:
        self._db = db
        self._client: Any = None
        self._server: Any = None
        self._last: Any = None

    def execute(self, sql: str, params: Sequence[Any]) -> Any:
        if "%b" in sql:
            if self._server is None:
                import psycopg

                self._db.validate_thread_sharing()
                with self._db.wrap_database_errors:
                    raw = psycopg.Cursor(self._db.connection)
                self._server = (
                    self._db.make_debug_cursor(raw) if self._db.queries_logged else self._db.make_cursor(raw)
                )
            self._last = self._server
        else:
            if self._client is None:
                self._client = self._db.cursor()
            self._last = self._client
        return self._last.execute(sql, params)

    def fetchall(self) -> list[Any]:
        rows: list[Any] = self._last.fetchall()
        return rows

    def close(self) -> None:
        for cursor in (self._client, self._server):
            if cursor is not None:
                cursor.close()


def array_parameter(column_type: str) -> str:
    """The placeholder of one array parameter of `column_type` elements, on PostgreSQL through
    `bulk_cursor`: binary, so psycopg writes it in a few struct packs rather than quoting each
    element into an array literal in Python (12 ms of a 500-event store write: docs/benchmarks.md,
    "Levers, thirty-third round")."""
    return f"%b::{column_type}[]"


@functools.lru_cache(maxsize=64)
def _insert_head(model: type[Model], fields: tuple[str, ...], vendor: str) -> tuple[str, tuple[str, ...]]:
    """`INSERT INTO table (columns)` of a model's concrete fields, and each column's type (for
    `vendor`, the connection's: part of the cache's key)."""
    concrete = {field.name: field for field in model._meta.concrete_fields}
    quote = connection.ops.quote_name
    columns = ", ".join(quote(str(concrete[name].column)) for name in fields)
    # The base type without its modifier: an explicit cast to varchar(64) would cut a longer value
    # short in silence, where the INSERT's own assignment to the column refuses it, as it refuses
    # it from a VALUES list.
    types = tuple(str(concrete[name].db_type(connection)).split("(")[0] for name in fields)
    return f"INSERT INTO {quote(model._meta.db_table)} ({columns})", types


@functools.lru_cache(maxsize=128)
def _values_sql(model: type[Model], fields: tuple[str, ...], vendor: str, rows: int, suffix: str) -> str:
    head, _ = _insert_head(model, fields, vendor)
    row = "(" + ", ".join(["%s"] * len(fields)) + ")"
    return f"{head} VALUES {', '.join([row] * rows)} {suffix}".rstrip()


@functools.lru_cache(maxsize=64)
def _unnest_sql(model: type[Model], fields: tuple[str, ...], vendor: str, suffix: str) -> str:
    head, types = _insert_head(model, fields, vendor)
    arrays = ", ".join(array_parameter(column_type) for column_type in types)
    return f"{head} SELECT * FROM unnest({arrays}) {suffix}".rstrip()  # noqa: S608 - names are ours


def _column_values(values: tuple[Any, ...]) -> list[Any]:
    """One column's values as one array parameter. psycopg refuses an array of mixed Python types
    (a time given as text in one row and as a datetime in another): such a column goes as text,
    which PostgreSQL reads back into the column's type."""
    kinds = {type(value) for value in values if value is not None}
    if len(kinds) <= 1:
        return list(values)
    return [None if value is None else str(value) for value in values]


def insert_rows(
    model: type[Model], fields: Sequence[str], rows: Sequence[Sequence[Any]], *, suffix: str = ""
) -> tuple[str, list[Any]]:
    """The SQL and parameters of one INSERT of `rows` (values in `fields` order) into `model`'s
    table, followed by `suffix` (ON CONFLICT …, RETURNING …), for `bulk_cursor().execute`.

    SQLite takes a VALUES list; callers keep a statement to 500 rows for its bound-parameter limit.
    PostgreSQL takes one array per column from `UNNEST_FROM_ROWS` rows on (the module's docstring).
    """
    names, vendor = tuple(fields), connection.vendor
    if vendor == "postgresql" and len(rows) >= UNNEST_FROM_ROWS:
        columns = zip(*rows, strict=True)
        return _unnest_sql(model, names, vendor, suffix), [_column_values(column) for column in columns]
    return _values_sql(model, names, vendor, len(rows), suffix), [value for row in rows for value in row]
