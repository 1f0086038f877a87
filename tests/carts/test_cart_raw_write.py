"""The cart step's raw SQL write (carts/services.py) stores what the ORM stored, on every database."""

from __future__ import annotations

import json
import uuid
from datetime import timedelta
from typing import Any

import pytest
from django.conf import settings
from django.db import connection
from django.db.models import Q

from carts import services
from carts.models import CART_CHECK_USER_INDEX, CartCheck, CartPurchase
from carts.services import cart_events_record
from cloudscale_project.timeutil import parse_iso

pytestmark = [pytest.mark.core, pytest.mark.django_db]

# Times the raw path writes without a datetime (canonical) and through one (the others), a
# fraction of zero (SQLite drops it), and a due time in the next day, month and year.
_TIMES = (
    "2026-03-14T09:26:53.589793Z",
    "2026-03-14T09:26:53.000000Z",
    "2025-12-31T23:45:00.000001Z",
    "2026-03-14T11:26:53.5+02:00",
    "2026-03-14T09:26:53Z",
)


def _event(event_type: str, *, at: str, user: str = "u1", **extra: Any) -> dict[str, Any]:
    return {
        "event_id": str(uuid.uuid4()),
        "event_type": event_type,
        "user_id": user,
        "session_id": "s-1",
        "timestamp": at,
        "properties": {},
        **extra,
    }


def _batch() -> list[dict[str, Any]]:
    """add_to_carts of every kind of time and properties, purchases that cancel some of them."""
    events = [
        _event(
            "add_to_cart",
            at=at,
            user=f"u{n}",
            properties={"product_id": "p-1", "quantity": 2, "price": 9.95, "name": "Äpfel ☃", "tags": [1]},
        )
        for n, at in enumerate(_TIMES)
    ]
    events.append(_event("add_to_cart", at=_TIMES[0], user="nobody", session_id=None, properties=None))
    events.append(_event("page_view", at=_TIMES[0]))
    events.append(_event("purchase", at="2026-03-14T09:40:00.000000Z", user="u0"))  # covers u0's cart
    events.append(_event("purchase", at="2026-01-01T00:15:00.000001Z", user="u2"))  # u2's due time: not
    events.append(_event("purchase", at="2026-03-14T09:26:53.000000Z", user="u1"))  # at added_at: covers
    return events


def _orm_record(*, tenant: str, events: list[dict[str, Any]]) -> None:
    """What cart_events_record did through the ORM: the reference for the raw write."""
    delay = timedelta(minutes=settings.CART_ABANDONMENT_MINUTES)
    checks = [
        CartCheck(
            tenant=tenant,
            event_id=str(e["event_id"]),
            user_id=str(e["user_id"]),
            session_id=str(e.get("session_id") or ""),
            properties=e.get("properties") or {},
            added_at=parse_iso(e["timestamp"]),
            due_at=parse_iso(e["timestamp"]) + delay,
        )
        for e in events
        if e["event_type"] == "add_to_cart"
    ]
    purchases = [
        CartPurchase(
            tenant=tenant,
            event_id=str(e["event_id"]),
            user_id=str(e["user_id"]),
            purchased_at=parse_iso(e["timestamp"]),
        )
        for e in events
        if e["event_type"] == "purchase"
    ]
    CartCheck.objects.bulk_create(checks, ignore_conflicts=True)
    CartPurchase.objects.bulk_create(purchases, ignore_conflicts=True)
    for p in purchases:
        CartCheck.objects.filter(
            tenant=tenant,
            status=CartCheck.Status.PENDING,
            user_id=p.user_id,
            added_at__lte=p.purchased_at,
            due_at__gt=p.purchased_at,
        ).update(status=CartCheck.Status.CANCELLED, resolved_at=parse_iso("2026-01-01T00:00:00Z"))


def _stored(table: str, columns: str, tenant: str) -> dict[str, tuple[Any, ...]]:
    """Rows by event id; times CAST to text so SQLite shows its stored text, not a datetime."""
    with connection.cursor() as cursor:
        cursor.execute(f"SELECT event_id, {columns} FROM {table} WHERE tenant = %s", [tenant])  # noqa: S608 - test's own names
        return {row[0]: tuple(row[1:]) for row in cursor.fetchall()}


def _json(value: Any) -> Any:
    return json.loads(value) if isinstance(value, str) else value


def test_it_stores_the_times_properties_and_statuses_the_orm_stored() -> None:
    events = _batch()
    _orm_record(tenant="orm", events=events)
    cart_events_record(tenant="raw", events=events)

    columns = (
        "user_id, session_id, CAST(added_at AS TEXT), CAST(due_at AS TEXT), status, properties, "
        "resolved_at IS NULL"
    )
    orm, raw = _stored("scoring_cartcheck", columns, "orm"), _stored("scoring_cartcheck", columns, "raw")
    assert len(raw) == 6
    assert raw.keys() == orm.keys()
    for event_id, row in raw.items():
        assert row[:5] == orm[event_id][:5], event_id
        assert _json(row[5]) == _json(orm[event_id][5]), event_id
        assert row[6] == orm[event_id][6], event_id
    statuses = {row[0]: row[4] for row in raw.values()}
    assert statuses == {
        "u0": "cancelled",
        "u1": "cancelled",
        "u2": "pending",
        "u3": "pending",
        "u4": "pending",
        "nobody": "pending",
    }
    purchases = "user_id, CAST(purchased_at AS TEXT)"
    assert _stored("scoring_cartpurchase", purchases, "raw") == _stored(
        "scoring_cartpurchase", purchases, "orm"
    )
    assert len(_stored("scoring_cartpurchase", purchases, "raw")) == 3
    # And as the ORM reads them back.
    fields = ("user_id", "session_id", "properties", "added_at", "due_at", "status")
    read = {c.event_id: [getattr(c, f) for f in fields] for c in CartCheck.objects.filter(tenant="raw")}
    assert read == {
        c.event_id: [getattr(c, f) for f in fields] for c in CartCheck.objects.filter(tenant="orm")
    }


def test_a_redelivered_batch_inserts_nothing_and_cancels_nothing_twice() -> None:
    events = _batch()
    cart_events_record(tenant="acme", events=events)
    checks = {c.event_id: (c.pk, c.created_at, c.status, c.resolved_at) for c in CartCheck.objects.all()}
    purchases = {p.event_id: (p.pk, p.recorded_at) for p in CartPurchase.objects.all()}
    assert sum(status == "cancelled" for _, _, status, _ in checks.values()) == 2

    cart_events_record(tenant="acme", events=events)

    assert {
        c.event_id: (c.pk, c.created_at, c.status, c.resolved_at) for c in CartCheck.objects.all()
    } == checks
    assert {p.event_id: (p.pk, p.recorded_at) for p in CartPurchase.objects.all()} == purchases


def test_batches_larger_than_one_statement_are_written_whole() -> None:
    """More rows than one INSERT takes, more purchases than one UPDATE: every row, every cancel."""
    carts = [_event("add_to_cart", at=_TIMES[0], user=f"u{n}") for n in range(services._INSERT_ROWS + 30)]
    bought = [_event("purchase", at="2026-03-14T09:30:00.000000Z", user=f"u{n}") for n in range(250)]
    cart_events_record(tenant="acme", events=[*carts, *bought])
    assert CartCheck.objects.filter(tenant="acme").count() == len(carts)
    assert CartPurchase.objects.filter(tenant="acme").count() == len(bought)
    cancelled = CartCheck.objects.filter(status=CartCheck.Status.CANCELLED)
    assert set(cancelled.values_list("user_id", flat=True)) == {f"u{n}" for n in range(250)}
    assert not cancelled.filter(~Q(tenant="acme")).exists()


def test_the_raw_insert_writes_every_column_of_the_tables() -> None:
    """A field added to a model must be added to the INSERT too (its default is not the database's)."""
    for model, fields in ((CartCheck, services._CHECK_FIELDS), (CartPurchase, services._PURCHASE_FIELDS)):
        assert set(fields) == {f.name for f in model._meta.concrete_fields if not f.primary_key}


def test_the_index_the_cancelling_update_names_is_the_users_index_of_the_checks() -> None:
    """`INDEXED BY` names an index: the name must be the model's index of a user's checks by status
    (SQLite refuses the UPDATE, "no such index", where it is not)."""
    users_index = next(index for index in CartCheck._meta.indexes if index.name == CART_CHECK_USER_INDEX)
    assert users_index.fields == ["tenant", "user_id", "status"]


@pytest.mark.parametrize("purchases", [1, 3])
def test_the_cancelling_update_searches_the_purchasing_users_checks_on_sqlite(purchases: int) -> None:
    """For a lone purchase SQLite's planner, with no statistics, took the (status, due_at) index
    and walked every pending check due after the purchase (docs/decisions.md, "Cancelling a cart's
    checks names its index")."""
    if connection.vendor != "sqlite":
        pytest.skip(f"SQLite's query plans; this run's database is {connection.vendor}")
    bought = [
        ("acme", f"p-{n}", f"u{n}", "2026-03-14 09:30:00", "2026-03-14 09:31:00") for n in range(purchases)
    ]
    sql, params = services.checks_cancel_statement(tenant="acme", purchases=bought, now="2026-03-14 09:31:00")
    with connection.cursor() as cursor:
        cursor.execute(f"EXPLAIN QUERY PLAN {sql}", params)
        plan = " ".join(str(row[-1]) for row in cursor.fetchall())
    assert f"USING INDEX {CART_CHECK_USER_INDEX} (tenant=? AND user_id=? AND status=?)" in plan, plan
    assert "cart_check_due" not in plan, plan


def test_a_lone_purchase_cancels_only_its_users_covered_checks() -> None:
    """The single-purchase UPDATE, as a one-event message sends it: among many pending checks of
    other users, only the buyer's checks whose window holds the purchase are cancelled."""
    carts = [_event("add_to_cart", at=_TIMES[0], user=f"u{n}") for n in range(50)]
    late = _event("add_to_cart", at="2026-03-14T09:45:00.000000Z", user="u7")  # added after the purchase
    cart_events_record(tenant="acme", events=[*carts, late])
    cart_events_record(
        tenant="acme", events=[_event("purchase", at="2026-03-14T09:40:00.000000Z", user="u7")]
    )
    cancelled = CartCheck.objects.filter(tenant="acme", status=CartCheck.Status.CANCELLED)
    assert list(cancelled.values_list("event_id", flat=True)) == [
        next(e["event_id"] for e in carts if e["user_id"] == "u7")
    ]
    assert CartCheck.objects.filter(tenant="acme", status=CartCheck.Status.PENDING).count() == 50
