"""The workers' bulk cursor (cloudscale_project/rawsql.py) behaves as Django's on every database."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import pytest
from django.db import IntegrityError, OperationalError, ProgrammingError, connection, transaction

from cloudscale_project.rawsql import bulk_cursor

pytestmark = [pytest.mark.core, pytest.mark.django_db(transaction=True)]


@pytest.fixture(autouse=True)
def _probe_table() -> Iterator[None]:
    with connection.cursor() as cursor:
        cursor.execute("CREATE TABLE rawsql_probe (k varchar(20) PRIMARY KEY, n integer NOT NULL)")
    yield
    with connection.cursor() as cursor:
        cursor.execute("DROP TABLE rawsql_probe")


def _insert(key: str, n: int) -> list[tuple[str, int]]:
    with bulk_cursor() as cursor:
        cursor.execute(
            "INSERT INTO rawsql_probe (k, n) VALUES (%s, %s), (%s, %s) RETURNING k, n",
            [key, n, f"{key}+", n + 1],
        )
        return sorted(tuple(row) for row in cursor.fetchall())


def _keys() -> list[str]:
    with connection.cursor() as cursor:
        cursor.execute("SELECT k FROM rawsql_probe ORDER BY k")
        return [key for (key,) in cursor.fetchall()]


def test_percent_s_placeholders_take_their_parameters_and_rows_come_back() -> None:
    assert _insert("one", 1) == [("one", 1), ("one+", 2)]
    assert _keys() == ["one", "one+"]


def test_statements_run_in_the_callers_transaction() -> None:
    with pytest.raises(RuntimeError), transaction.atomic():
        _insert("rolled-back", 1)
        raise RuntimeError("roll back")
    assert _keys() == []


def test_database_errors_are_djangos() -> None:
    _insert("twice", 1)
    with pytest.raises(IntegrityError), transaction.atomic():
        _insert("twice", 1)
    with pytest.raises((OperationalError, ProgrammingError)), transaction.atomic(), bulk_cursor() as cursor:
        cursor.execute("SELECT n FROM no_such_table WHERE k = %s", ["x"])
    assert _keys() == ["twice", "twice+"]


def test_execute_wrappers_still_see_every_statement() -> None:
    seen: list[str] = []

    def wrapper(execute: Any, sql: str, params: Any, many: bool, context: Any) -> Any:
        seen.append(sql.split(None, 1)[0])
        return execute(sql, params, many, context)

    with connection.execute_wrapper(wrapper):
        _insert("wrapped", 1)
    assert seen == ["INSERT"]
