"""GET /api/events and GET /api/events/{event_id}: tenant-scoped reads, cursor pagination, errors."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
import yaml
from django.test import Client

from cloudscale_project.timeutil import isoformat_z
from events.stores.base import PUBLIC_FIELDS, Event
from events.stores.orm import OrmEventStore
from tests.conftest import Actor
from tests.events.pipeline_support import enriched_event

pytestmark = [pytest.mark.django_db, pytest.mark.core]

T0 = datetime(2026, 11, 20, 12, tzinfo=UTC)


def store(tenant: str, count: int, **overrides: Any) -> list[Event]:
    """`count` events one minute apart from T0, stored directly; returned newest first."""
    events = [
        enriched_event(tenant=tenant, timestamp=isoformat_z(T0 + timedelta(minutes=i)), **overrides)
        for i in range(count)
    ]
    OrmEventStore().write_many(events)
    return sorted(events, key=lambda e: e["timestamp"], reverse=True)


def get(client: Client, actor: Actor, path: str = "/api/events", **params: Any) -> Any:
    return client.get(path, params, **actor.headers)


def test_it_pages_through_every_event_exactly_once_newest_first(client: Client, acme: Actor) -> None:
    events = store("acme", 7)
    seen: list[str] = []
    cursor = None
    pages = 0
    while True:
        params: dict[str, Any] = {"limit": 3, **({"cursor": cursor} if cursor else {})}
        response = get(client, acme, **params)
        assert response.status_code == 200
        body = response.json()
        seen += [e["event_id"] for e in body["results"]]
        pages += 1
        cursor = body["next"]
        if cursor is None:
            break
    assert pages == 3
    assert seen == [e["event_id"] for e in events]


def test_it_breaks_timestamp_ties_by_event_id_without_skipping_any(client: Client, acme: Actor) -> None:
    same_time = isoformat_z(T0)
    events = [enriched_event(timestamp=same_time) for _ in range(5)]
    OrmEventStore().write_many(events)
    first = get(client, acme, limit=2).json()
    rest = get(client, acme, limit=10, cursor=first["next"]).json()
    ids = [e["event_id"] for e in first["results"] + rest["results"]]
    assert ids == sorted((e["event_id"] for e in events), reverse=True)


def test_it_renders_the_public_fields_of_a_stored_event(client: Client, acme: Actor) -> None:
    (event,) = store("acme", 1, client_timestamp="2026-11-20T11:59:58Z", skew_corrected=True)
    body = get(client, acme).json()
    assert body["next"] is None
    (shown,) = body["results"]
    assert tuple(shown) == PUBLIC_FIELDS
    assert "tenant" not in shown
    assert shown["event_id"] == event["event_id"]
    assert shown["timestamp"] == event["timestamp"] and shown["received_at"] == event["received_at"]
    assert shown["client_timestamp"] == "2026-11-20T11:59:58Z" and shown["skew_corrected"] is True
    assert shown["properties"] == event["properties"]


def test_it_filters_by_type_user_and_time(client: Client, acme: Actor) -> None:
    store("acme", 3)  # page_view, u-1, T0..T0+2m
    searches = store("acme", 2, event_type="search", properties={"query": "socks"}, user_id="u-2")

    by_type = get(client, acme, event_type="search").json()["results"]
    assert [e["event_id"] for e in by_type] == [e["event_id"] for e in searches]
    assert {e["user_id"] for e in get(client, acme, user_id="u-1").json()["results"]} == {"u-1"}

    window = get(client, acme, since="2026-11-20T12:01:00Z", until="2026-11-20T12:02:00Z").json()["results"]
    assert {e["timestamp"] for e in window} == {isoformat_z(T0 + timedelta(minutes=1))}
    assert len(window) == 2  # one page_view and one search at 12:01


def test_a_tenant_never_sees_another_tenants_events(client: Client, acme: Actor, globex: Actor) -> None:
    (theirs,) = store("acme", 1)
    assert get(client, globex).json() == {"results": [], "next": None}
    assert get(client, globex, user_id=theirs["user_id"]).json()["results"] == []
    response = get(client, globex, f"/api/events/{theirs['event_id']}")
    assert response.status_code == 404
    assert get(client, acme, f"/api/events/{theirs['event_id']}").status_code == 200


def test_a_cursor_of_one_tenant_does_not_open_another_tenants_events(
    client: Client, acme: Actor, globex: Actor
) -> None:
    store("acme", 3)
    cursor = get(client, acme, limit=1).json()["next"]
    assert get(client, globex, cursor=cursor).json()["results"] == []


def test_it_returns_one_event_by_id_and_404_when_it_is_not_stored(client: Client, acme: Actor) -> None:
    (event,) = store("acme", 1)
    response = get(client, acme, f"/api/events/{event['event_id']}")
    assert response.status_code == 200 and response.json()["event_id"] == event["event_id"]
    assert "X-Correlation-ID" in response.headers

    missing = get(client, acme, "/api/events/not-there")
    assert missing.status_code == 404
    body = missing.json()
    assert body["error"]["code"] == "not_found"
    assert body["error"]["message"] == "Event 'not-there' is not stored (yet)."
    assert body["correlation_id"]


def test_an_empty_time_range_is_an_empty_page(client: Client, acme: Actor) -> None:
    response = get(client, acme, since="2026-11-20T12:00:00Z", until="2026-11-20T12:00:00Z")
    assert response.status_code == 200
    assert response.json() == {"results": [], "next": None}


@pytest.mark.parametrize(
    ("params", "field"),
    [
        ({"limit": 0}, "limit"),
        ({"limit": 1001}, "limit"),
        ({"limit": "ten"}, "limit"),
        ({"since": "last tuesday"}, "since"),
        ({"until": "2026-13-01"}, "until"),
        ({"user_id": ""}, "user_id"),
        ({"cursor": "not-a-cursor"}, "cursor"),
        ({"cursor": "WyJ5ZXN0ZXJkYXkiLCJ4Il0"}, "cursor"),  # ["yesterday","x"]: decodes, not a time
        ({"event_type": ""}, "event_type"),
        ({"event_type": "x" * 201}, "event_type"),
        ({"user_id": "u" * 129}, "user_id"),
    ],
)
def test_it_answers_400_validation_error_naming_the_parameter(
    client: Client, acme: Actor, params: dict[str, Any], field: str
) -> None:
    response = get(client, acme, **params)
    assert response.status_code == 400
    error = response.json()["error"]
    assert error["code"] == "validation_error"
    assert error["message"] == "Invalid query parameters."
    assert [d["field"] for d in error["details"]] == [field]


def test_it_accepts_the_largest_page(client: Client, acme: Actor) -> None:
    store("acme", 2)
    assert len(get(client, acme, limit=1000).json()["results"]) == 2


def test_reads_need_an_api_key(client: Client, acme: Actor) -> None:
    assert client.get("/api/events").status_code == 401
    assert client.get("/api/events/x").status_code == 401


def test_the_openapi_schema_documents_both_reads(client: Client) -> None:
    schema = yaml.safe_load(client.get("/api/schema/").content)
    listing = schema["paths"]["/api/events"]["get"]
    assert {p["name"] for p in listing["parameters"]} >= {
        "event_type",
        "user_id",
        "since",
        "until",
        "limit",
        "cursor",
    }
    assert {"200", "400", "401"} <= set(listing["responses"])
    detail = schema["paths"]["/api/events/{event_id}"]["get"]
    assert {"200", "404"} <= set(detail["responses"])
    stored = schema["components"]["schemas"]["StoredEvent"]
    assert set(stored["properties"]) == set(PUBLIC_FIELDS)
