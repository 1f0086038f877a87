"""The event-store contract: every adapter (ORM, Cosmos DB) passes these same tests unchanged."""

from __future__ import annotations

import uuid
from collections.abc import Sequence
from datetime import UTC, datetime, timedelta
from typing import Any, cast

import pytest
from django.db import OperationalError, connection

from cloudscale_project.timeutil import isoformat_z, parse_iso
from events.stores.base import Event, EventStore, InvalidCursor, StoreUnavailable, encode_cursor, public_view
from events.stores.orm import OrmEventStore
from tests.netutil import free_port

pytestmark = pytest.mark.filterwarnings("ignore:Unverified HTTPS request")

SEP = datetime(2026, 9, 20, 8, 0, tzinfo=UTC)
OCT = datetime(2026, 10, 15, 12, 0, tzinfo=UTC)
NOV = datetime(2026, 11, 26, 10, 0, tzinfo=UTC)


def make_event(
    *,
    tenant: str = "acme",
    timestamp: datetime = NOV,
    received_at: datetime | None = None,
    event_id: str | None = None,
    event_type: str = "click",
    user_id: str = "u-1",
    **extra: Any,
) -> Event:
    """An enriched event as the worker hands it to the store (docs/api.md, "Stored events", plus tenant)."""
    event: Event = {
        "event_id": event_id or str(uuid.uuid4()),
        "event_type": event_type,
        "user_id": user_id,
        "session_id": "s-1",
        "properties": {"url": "https://shop.example/p/1", "nested": {"depth": [1, 2]}},
        "timestamp": isoformat_z(timestamp),
        "client_timestamp": isoformat_z(timestamp - timedelta(seconds=2)),
        "sent_at": isoformat_z(timestamp),
        "received_at": isoformat_z(received_at or timestamp),
        "skew_corrected": True,
        "timestamp_clamped": False,
        "ip": "203.0.113.7",
        "user_agent": "pytest/1.0",
        "correlation_id": str(uuid.uuid4()),
        "tenant": tenant,
    }
    # `extra` overrides fields by name with whatever a test passes, which may be malformed on purpose.
    event.update(cast(Event, extra))
    return event


def ids(events: Sequence[Event]) -> list[str]:
    return [event["event_id"] for event in events]


def newest_first(events: Sequence[Event]) -> list[str]:
    return ids(sorted(events, key=lambda e: (e["timestamp"], e["event_id"]), reverse=True))


def read_all(store: EventStore, *, limit: int, **filters: Any) -> tuple[list[str], int]:
    """Every page of a query: (the ids in order, how many pages)."""
    collected: list[str] = []
    cursor = None
    pages = 0
    while True:
        page = store.query(tenant=filters.pop("tenant", "acme"), limit=limit, cursor=cursor, **filters)
        pages += 1
        assert len(page.results) <= limit
        collected += ids(page.results)
        cursor = page.next_cursor
        if cursor is None:
            return collected, pages
        assert pages < 50, "the cursor does not advance"


# The django_db mark (not only the `db` fixture) tells pytest-django at collection time that the run
# needs the test database.
@pytest.fixture(params=[pytest.param("orm", marks=[pytest.mark.core, pytest.mark.django_db]), "cosmos"])
def store(request: pytest.FixtureRequest) -> EventStore:
    if request.param == "orm":
        from events.stores.orm import OrmEventStore

        return OrmEventStore()
    return request.getfixturevalue("cosmos_server").store()


def test_it_stores_each_event_once_and_reports_only_new_ids(store: EventStore) -> None:
    batch = [make_event(), make_event(), make_event(timestamp=OCT)]

    assert store.write_many(batch) == set(ids(batch))

    late = make_event()
    assert store.write_many([*batch, late]) == {late["event_id"]}
    assert store.write_many(batch) == set()
    stored, _ = read_all(store, limit=100)
    assert sorted(stored) == sorted(ids([*batch, late]))


def test_it_writes_nothing_for_an_empty_batch(store: EventStore) -> None:
    assert store.write_many([]) == set()
    assert store.query(tenant="acme").results == []


def test_it_counts_an_event_repeated_within_one_batch_once(store: EventStore) -> None:
    event = make_event()

    assert store.write_many([event, event.copy()]) == {event["event_id"]}
    assert ids(store.query(tenant="acme").results) == [event["event_id"]]


def test_it_reads_back_the_stored_event_as_written(store: EventStore) -> None:
    event = make_event(timestamp=OCT, received_at=NOV, event_type="purchase", user_id="u-42")
    store.write_many([event])

    stored = store.get(tenant="acme", event_id=event["event_id"])

    assert stored is not None
    assert public_view(stored) == public_view(event)
    assert stored["tenant"] == "acme"
    assert store.get(tenant="acme", event_id="never-sent") is None


def test_it_keeps_a_custom_event_with_its_name_mark_and_context(store: EventStore) -> None:
    name = "Level Finished " + "x" * 150  # custom names are up to 200 characters
    custom = make_event(event_type=name, custom=True, context={"library": {"name": "analytics-python"}})
    native = make_event()
    store.write_many([custom, native])

    stored = store.get(tenant="acme", event_id=custom["event_id"])
    assert stored is not None and public_view(stored) == public_view(custom)
    assert (stored["custom"], stored["context"]) == (True, {"library": {"name": "analytics-python"}})
    plain = store.get(tenant="acme", event_id=native["event_id"])
    assert plain is not None and (plain["custom"], plain["context"]) == (False, None)
    assert ids(store.query(tenant="acme", event_type=name).results) == [custom["event_id"]]


def test_it_keeps_times_to_the_microsecond_and_orders_them(store: EventStore) -> None:
    whole = make_event(timestamp=NOV, received_at=NOV)
    fraction = make_event(
        timestamp=NOV + timedelta(microseconds=1), received_at=NOV + timedelta(microseconds=7)
    )
    second = make_event(timestamp=NOV + timedelta(seconds=1), received_at=NOV + timedelta(seconds=1))
    store.write_many([fraction, second, whole])

    for event in (whole, fraction, second):
        stored = store.get(tenant="acme", event_id=event["event_id"])
        assert stored is not None
        assert (stored["timestamp"], stored["received_at"]) == (event["timestamp"], event["received_at"])
    assert ids(store.query(tenant="acme").results) == ids([second, fraction, whole])
    assert ids(store.query(tenant="acme", since=NOV + timedelta(microseconds=1)).results) == ids(
        [second, fraction]
    )


def test_it_keeps_tenants_apart(store: EventStore) -> None:
    acme = make_event(tenant="acme")
    globex = make_event(tenant="globex", event_id=acme["event_id"], user_id="g-1")

    assert store.write_many([acme]) == {acme["event_id"]}
    assert store.get(tenant="globex", event_id=acme["event_id"]) is None
    assert store.query(tenant="globex").results == []

    # The same event id in another tenant is another event.
    assert store.write_many([globex]) == {globex["event_id"]}
    acme_copy, globex_copy = (store.get(tenant=t, event_id=acme["event_id"]) for t in ("acme", "globex"))
    assert acme_copy is not None and acme_copy["user_id"] == "u-1"
    assert globex_copy is not None and globex_copy["user_id"] == "g-1"


def test_it_pages_newest_first_with_a_cursor(store: EventStore) -> None:
    # Two pairs share a timestamp: ties are broken by event id, so no page repeats or skips one.
    times = [NOV, NOV, NOV - timedelta(minutes=1), NOV - timedelta(minutes=2), NOV - timedelta(minutes=2)]
    events = [make_event(timestamp=t) for t in [*times, NOV - timedelta(hours=5), NOV - timedelta(days=3)]]
    store.write_many(events)

    first = store.query(tenant="acme", limit=3)
    assert ids(first.results) == newest_first(events)[:3]
    assert first.next_cursor is not None

    everything, pages = read_all(store, limit=3)
    assert everything == newest_first(events)
    assert pages == 3


def test_it_ends_with_no_cursor_when_the_last_page_is_full(store: EventStore) -> None:
    events = [make_event(timestamp=NOV - timedelta(minutes=i)) for i in range(4)]
    store.write_many(events)

    page = store.query(tenant="acme", limit=4)

    assert ids(page.results) == newest_first(events)
    assert page.next_cursor is None


def test_it_carries_the_cursor_across_months(store: EventStore) -> None:
    # Newest first across three month partitions, with pages that end inside and at month edges.
    events = [
        make_event(timestamp=NOV),
        make_event(timestamp=NOV - timedelta(days=20)),  # 2026-11-06
        make_event(timestamp=OCT + timedelta(days=10)),
        make_event(timestamp=OCT),
        make_event(timestamp=OCT - timedelta(days=14)),  # 2026-10-01
        make_event(timestamp=SEP),
        make_event(timestamp=SEP - timedelta(days=300)),  # a back-dated event, 2025
    ]
    store.write_many(events)

    for limit in (1, 2, 3, 4):
        everything, _ = read_all(store, limit=limit)
        assert everything == newest_first(events), f"limit={limit}"

    until = OCT + timedelta(days=1)
    in_range, _ = read_all(store, limit=2, since=SEP, until=until)
    assert in_range == newest_first([e for e in events if SEP <= parse_iso(e["timestamp"]) < until])
    assert len(in_range) == 3


def test_it_filters_by_type_user_and_time_range(store: EventStore) -> None:
    purchase = make_event(event_type="purchase", timestamp=NOV - timedelta(hours=1))
    other_user = make_event(user_id="u-2", timestamp=NOV - timedelta(hours=2))
    at_since = make_event(timestamp=NOV - timedelta(hours=3))
    before = make_event(timestamp=NOV - timedelta(hours=4))
    at_until = make_event(timestamp=NOV)
    store.write_many([purchase, other_user, at_since, before, at_until])

    def query(**filters: Any) -> list[str]:
        return ids(store.query(tenant="acme", **filters).results)

    assert query(event_type="purchase") == [purchase["event_id"]]
    assert query(user_id="u-2") == [other_user["event_id"]]
    # since is inclusive, until exclusive.
    window = {"since": NOV - timedelta(hours=3), "until": NOV}
    assert query(**window) == ids([purchase, other_user, at_since])
    assert query(event_type="click", user_id="u-1", **window) == [at_since["event_id"]]
    assert query(since=NOV) == [at_until["event_id"]]
    assert query(until=NOV - timedelta(hours=3)) == [before["event_id"]]
    assert query(event_type="signup") == []


def test_it_continues_a_filtered_query_with_its_cursor(store: EventStore) -> None:
    clicks = [make_event(timestamp=OCT - timedelta(days=i)) for i in range(0, 40, 8)]
    store.write_many([*clicks, make_event(event_type="search", timestamp=OCT - timedelta(days=9))])

    everything, pages = read_all(store, limit=2, event_type="click")

    assert everything == newest_first(clicks)
    assert pages == 3


def test_it_refuses_a_cursor_it_did_not_issue(store: EventStore) -> None:
    with pytest.raises(InvalidCursor):
        store.query(tenant="acme", cursor="not-a-cursor")
    with pytest.raises(ValueError):
        store.query(tenant="acme", cursor=encode_cursor("yesterday", "e-1"))


def test_it_counts_stored_events_per_hour_of_arrival(store: EventStore) -> None:
    hour = datetime(2026, 11, 30, 22, 0, tzinfo=UTC)
    arrivals = [
        # received in the first hour: on time, back-dated by months, and 23 h in the future
        # (the latest a timestamp can be: it lands in the next month's partition)
        make_event(timestamp=hour + timedelta(minutes=5), received_at=hour + timedelta(minutes=5)),
        make_event(timestamp=SEP, received_at=hour + timedelta(minutes=59, seconds=59)),
        make_event(
            timestamp=hour + timedelta(hours=23, minutes=30), received_at=hour + timedelta(minutes=30)
        ),
        # the second hour
        make_event(timestamp=hour + timedelta(minutes=70), received_at=hour + timedelta(minutes=70)),
        # outside the range, and another tenant
        make_event(timestamp=hour - timedelta(minutes=1), received_at=hour - timedelta(minutes=1)),
        make_event(timestamp=hour + timedelta(hours=2), received_at=hour + timedelta(hours=2)),
        make_event(tenant="globex", timestamp=hour, received_at=hour),
    ]
    store.write_many(arrivals)

    counts = store.count_stored_by_hour(tenant="acme", since=hour, until=hour + timedelta(hours=2))

    assert counts == {hour: 3, hour + timedelta(hours=1): 1}
    assert store.count_stored_by_hour(tenant="acme", since=hour, until=hour + timedelta(hours=1)) == {hour: 3}
    assert store.count_stored_by_hour(tenant="initech", since=hour, until=hour + timedelta(hours=2)) == {}


def _refuse_queries(*args: Any) -> None:
    raise OperationalError("the database is down")


def test_it_answers_ping_and_fails_it_when_it_cannot_answer(
    store: EventStore, request: pytest.FixtureRequest
) -> None:
    store.ping()  # /readyz: a store that answers raises nothing

    if isinstance(store, OrmEventStore):
        # Django's own hook around every query: the database refuses what the ping sends.
        with connection.execute_wrapper(_refuse_queries), pytest.raises(StoreUnavailable):
            store.ping()
    else:
        unreachable = request.getfixturevalue("cosmos_server").store(
            endpoint=f"https://127.0.0.1:{free_port()}", container="events"
        )
        with pytest.raises(StoreUnavailable):
            unreachable.ping()


# Retention (ORM only: Cosmos DB expires events by their TTL).


@pytest.mark.core
@pytest.mark.django_db
def test_the_purge_deletes_expired_events_of_every_tenant_and_keeps_the_rest() -> None:
    store = OrmEventStore()
    cutoff = OCT
    expired = [
        make_event(tenant=tenant, received_at=cutoff - timedelta(microseconds=1))
        for tenant in ("acme", "beta", "gone-tenant-without-a-row")
    ]
    kept = [
        make_event(tenant="acme", received_at=cutoff),  # not older than the cut-off
        make_event(tenant="beta", received_at=NOV),
        make_event(tenant="zeta", received_at=NOV),
    ]
    store.write_many([*expired, *kept])

    assert store.purge_expired(older_than=cutoff) == len(expired)

    for event in expired:
        assert store.get(tenant=event["tenant"], event_id=event["event_id"]) is None
    for event in kept:
        assert store.get(tenant=event["tenant"], event_id=event["event_id"]) is not None
    assert store.purge_expired(older_than=cutoff) == 0


@pytest.mark.core
@pytest.mark.django_db
def test_the_purge_finds_each_tenant_once_and_reads_arrival_through_the_tenant_index() -> None:
    from django.test.utils import CaptureQueriesContext

    from events.stores.orm import _stored_tenants

    store = OrmEventStore()
    store.write_many([make_event(tenant=t, received_at=SEP) for t in ("b", "a", "b", "c", "a")])
    assert _stored_tenants() == ["a", "b", "c"]

    with CaptureQueriesContext(connection) as queries:
        store.purge_expired(older_than=OCT)
    deletes = [query["sql"] for query in queries.captured_queries if query["sql"].startswith("DELETE")]
    assert len(deletes) == 3  # one per tenant
    if connection.vendor != "sqlite":
        return  # PostgreSQL plans a table this small as a scan whatever its indexes
    with connection.cursor() as cursor:
        cursor.execute(f"EXPLAIN QUERY PLAN {deletes[0]}")  # the statement as it ran, values inlined
        plan = " ".join(str(row[-1]) for row in cursor.fetchall())
    assert "USING INDEX event_tenant_received" in plan, plan


@pytest.mark.core
@pytest.mark.django_db
def test_a_page_seeks_its_index_by_filter_and_cursor_time() -> None:
    """On SQLite, each filter's own index is read from the cursor's time on: a user's or a type's
    events do not walk the tenant's whole time index, and page n does not start at the newest event."""
    if connection.vendor != "sqlite":
        pytest.skip(f"SQLite's query plans; this run's database is {connection.vendor}")
    store = OrmEventStore()
    store.write_many([make_event(timestamp=NOV, user_id=f"u-{n % 3}") for n in range(5)])
    cursor = encode_cursor(isoformat_z(NOV), "e-zzz")
    selects: list[tuple[str, Any]] = []

    def keep_select(execute: Any, sql: str, params: Any, many: bool, context: Any) -> Any:
        if sql.startswith("SELECT"):
            selects.append((sql, params))
        return execute(sql, params, many, context)

    cases = [  # (the index, user_id, event_type)
        ("event_tenant_time", None, None),
        ("event_tenant_user_time", "u-1", None),
        ("event_tenant_type_time", None, "click"),
    ]
    for index, user_id, event_type in cases:
        selects.clear()
        with connection.execute_wrapper(keep_select):
            store.query(tenant="acme", cursor=cursor, user_id=user_id, event_type=event_type)
        (select,) = selects
        with connection.cursor() as db:
            # The statement as it ran, with its values bound: SQLite plans inlined values otherwise.
            db.execute(f"EXPLAIN QUERY PLAN {select[0]}", select[1])
            plan = " ".join(str(row[-1]) for row in db.fetchall())
        assert f"USING INDEX {index} (" in plan and "timestamp<?)" in plan, (index, plan)
