"""The workers' bulk cursor and bulk INSERTs (cloudscale_project/rawsql.py) on every database."""

from __future__ import annotations

from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
from django.db import DataError, IntegrityError, OperationalError, ProgrammingError, connection, transaction
from django.test.utils import CaptureQueriesContext

from cloudscale_project.rawsql import UNNEST_FROM_ROWS, _column_values, bulk_cursor, insert_rows
from cloudscale_project.timeutil import isoformat_z
from events.stores.orm import OrmEventStore
from scoring.models import ScoredEvent, UserScore
from scoring.services import scores_apply, scores_apply_stored
from tests.events.pipeline_support import enriched_event
from tests.events.test_store_contract import make_event

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
        # Many rows: on PostgreSQL arrays in binary, through the cursor that binds on the server.
        with bulk_cursor() as cursor:
            cursor.execute(*insert_rows(ScoredEvent, _MARKER_FIELDS, _marker_rows(UNNEST_FROM_ROWS, "w")))
    assert seen == ["INSERT", "INSERT"]


def test_the_debug_log_records_the_bulk_statements_where_djangos_cursor_runs_them() -> None:
    with CaptureQueriesContext(connection) as queries, bulk_cursor() as cursor:
        cursor.execute(*insert_rows(ScoredEvent, _MARKER_FIELDS, _marker_rows(UNNEST_FROM_ROWS, "d")))
        cursor.execute("SELECT count(*) FROM scoring_scoredevent WHERE tenant = %s", ["acme"])
        assert cursor.fetchall() == [(UNNEST_FROM_ROWS,)]  # the rows come from the statement run last
        wrapped = bool(connection.execute_wrappers)  # tracing's SQL spans, when a test set them up
    logged = [query["sql"].split(None, 1)[0] for query in queries.captured_queries]
    if connection.vendor == "postgresql" or wrapped:
        assert logged == ["INSERT", "SELECT"]
    else:  # SQLite's bulk cursor is sqlite3's own: not logged (the module's docstring says so)
        assert logged == []


_MARKER_FIELDS = ("tenant", "event_id", "batch", "applied_at")
_RETURNING = "ON CONFLICT (tenant, event_id) DO NOTHING RETURNING event_id"
_AT = datetime(2026, 11, 30, 12, 0, 0, 250000, tzinfo=UTC)


def _marker_rows(count: int, prefix: str) -> list[tuple[Any, ...]]:
    adapt = connection.ops.adapt_datetimefield_value
    return [("acme", f"{prefix}-{n:03d}", "b", adapt(_AT + timedelta(seconds=n))) for n in range(count)]


def _markers(prefix: str) -> list[tuple[str, str, str, datetime]]:
    rows = ScoredEvent.objects.filter(event_id__startswith=f"{prefix}-").order_by("event_id")
    return [(row.tenant, row.event_id, row.batch, row.applied_at) for row in rows]


def test_insert_rows_stores_the_same_values_for_few_rows_and_for_many() -> None:
    many = UNNEST_FROM_ROWS + 4
    for prefix, count in (("few", 3), ("many", many)):
        with bulk_cursor() as cursor:
            cursor.execute(
                *insert_rows(ScoredEvent, _MARKER_FIELDS, _marker_rows(count, prefix), suffix=_RETURNING)
            )
            assert len(cursor.fetchall()) == count  # RETURNING names every new row
    expected = [("acme", f"many-{n:03d}", "b", _AT + timedelta(seconds=n)) for n in range(many)]
    assert _markers("many") == expected
    assert _markers("few") == [(t, e.replace("many", "few"), b, at) for t, e, b, at in expected[:3]]
    # The same rows again: ON CONFLICT DO NOTHING, so RETURNING names none of them.
    with bulk_cursor() as cursor:
        cursor.execute(
            *insert_rows(ScoredEvent, _MARKER_FIELDS, _marker_rows(many, "many"), suffix=_RETURNING)
        )
        assert cursor.fetchall() == []


def test_on_postgresql_many_rows_go_as_one_array_per_column() -> None:
    few_sql, few_params = insert_rows(ScoredEvent, _MARKER_FIELDS, _marker_rows(3, "f"))
    many_sql, many_params = insert_rows(ScoredEvent, _MARKER_FIELDS, _marker_rows(UNNEST_FROM_ROWS, "m"))
    assert "VALUES" in few_sql and len(few_params) == 3 * len(_MARKER_FIELDS)
    if connection.vendor == "postgresql":
        assert "unnest(" in many_sql and "VALUES" not in many_sql
        assert many_sql.count("%b::") == len(_MARKER_FIELDS) and "%s" not in many_sql  # in binary
        assert len(many_params) == len(_MARKER_FIELDS)
        assert many_params[1] == [f"m-{n:03d}" for n in range(UNNEST_FROM_ROWS)]
    else:  # SQLite has no arrays: a VALUES list whatever the size
        assert "VALUES" in many_sql and len(many_params) == UNNEST_FROM_ROWS * len(_MARKER_FIELDS)


def test_a_value_too_long_for_its_column_is_refused_never_cut_short() -> None:
    """An explicit cast to varchar(32)[] would truncate in silence; the statement casts to the base
    type, so the column's own length check refuses the row, as it does from a VALUES list."""
    rows = _marker_rows(UNNEST_FROM_ROWS, "long")
    rows[3] = (*rows[3][:2], "b" * 40, rows[3][3])  # `batch` is varchar(32)
    if connection.vendor == "postgresql":
        with pytest.raises(DataError), transaction.atomic(), bulk_cursor() as cursor:
            cursor.execute(*insert_rows(ScoredEvent, _MARKER_FIELDS, rows))
        assert _markers("long") == []
    else:  # SQLite does not enforce a varchar's length: the value is stored whole
        with bulk_cursor() as cursor:
            cursor.execute(*insert_rows(ScoredEvent, _MARKER_FIELDS, rows))
        assert _markers("long")[3][2] == "b" * 40


def test_a_column_of_mixed_types_goes_as_text() -> None:
    """psycopg refuses an array of mixed Python types; such a column is sent as text instead."""
    assert _column_values((1.5, None, 2.0)) == [1.5, None, 2.0]
    assert _column_values(("2026-11-30T12:00:00.000000Z", None, _AT)) == [
        "2026-11-30T12:00:00.000000Z",
        None,
        "2026-11-30 12:00:00.250000+00:00",
    ]


def test_the_event_store_writes_a_large_batch_with_an_odd_time_as_it_writes_a_small_one() -> None:
    """On PostgreSQL a time that is not in the API's form goes in as a datetime among text times
    (cloudscale_project/dbtime.py): the mixed column must still store every time exactly."""
    store = OrmEventStore()
    odd = "2026-11-26T12:00:00.5+02:00"  # the same instant as 10:00:00.500000Z, not canonical
    for count in (2, UNNEST_FROM_ROWS + 2):
        events = [make_event(user_id=f"u-{n}") for n in range(count)]
        events[0]["timestamp"] = odd
        events[1]["properties"] = {}
        assert store.write_many(events) == {event["event_id"] for event in events}
        first, second = (store.get(tenant="acme", event_id=event["event_id"]) for event in events[:2])
        assert first is not None and first["timestamp"] == "2026-11-26T10:00:00.500000Z"
        assert second is not None and second["properties"] == {}
        last = store.get(tenant="acme", event_id=events[-1]["event_id"])
        assert last is not None and last["timestamp"] == isoformat_z(
            datetime(2026, 11, 26, 10, 0, tzinfo=UTC)
        )
        assert last["properties"] == events[-1]["properties"]


def test_binary_arrays_carry_nulls_json_text_and_flags() -> None:
    """Every kind of column the workers write in bulk, through the binary arrays on PostgreSQL: a
    column that is NULL in every row (a native event's `context`), JSON given as text, text with
    quotes, backslashes, braces and spaces, and flags. Scores' numbers: the next test."""
    store = OrmEventStore()
    events = [make_event(user_id=f'u-{n} "q" \\ {{b}}') for n in range(UNNEST_FROM_ROWS + 1)]
    for event in events:
        event.pop("context", None)
    events[2]["properties"] = {"quote": 'say "hi"', "back": "a\\b", "list": [1, None, "x"]}
    events[3]["custom"] = True
    assert store.write_many(events) == {event["event_id"] for event in events}
    for event in events:
        stored = store.get(tenant="acme", event_id=event["event_id"])
        assert stored is not None
        assert stored["user_id"] == event["user_id"] and stored["properties"] == event["properties"]
        assert stored.get("context") is None
        assert stored["custom"] is bool(event.get("custom"))


def test_scores_of_many_users_add_up_through_arrays_and_markers_are_found_by_id() -> None:
    """Scoring's bulk statements with numbers (a float and small integers per user) and its markers'
    lookup (one array of ids on PostgreSQL, an IN list on SQLite)."""
    purchases = [
        enriched_event(event_type="purchase", user_id=f"user-{n:02d}") for n in range(UNNEST_FROM_ROWS + 1)
    ]
    assert scores_apply(tenant="acme", events=purchases) == len(purchases)
    assert scores_apply(tenant="acme", events=purchases) == 0  # the markers say they were applied
    rows = UserScore.objects.filter(tenant="acme").order_by("user_id")
    assert [(row.user_id, row.events_counted, row.purchase_count) for row in rows] == [
        (event["user_id"], 1, 1) for event in purchases
    ]
    assert all(row.score_at_epoch > 0 for row in rows)
    # Half of them again, with as many new events: only the new ones are applied.
    again = purchases[::2] + [
        enriched_event(event_type="click", user_id="user-00") for _ in range(UNNEST_FROM_ROWS)
    ]
    assert scores_apply_stored(tenant="acme", events=again) == UNNEST_FROM_ROWS
    assert UserScore.objects.get(tenant="acme", user_id="user-00").events_counted == 1 + UNNEST_FROM_ROWS
