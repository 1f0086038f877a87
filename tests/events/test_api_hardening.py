"""Inputs that used to be a 500, or a 202 that could never be stored: each is now stored or a 4xx."""

from __future__ import annotations

import base64
import json
from typing import Any

import pytest
from django.test import Client

from events.models import DeadLetter, StoredEvent
from events.stores import get_event_store
from events.tasks import process_batch
from tests.conftest import Actor
from tests.events.pipeline_support import take_one_message

pytestmark = [pytest.mark.django_db, pytest.mark.core]


def post(client: Client, actor: Actor, body: Any, path: str = "/api/events") -> Any:
    return client.post(path, data=json.dumps(body), content_type="application/json", **actor.headers)


def cursor_of(timestamp: str, event_id: str) -> str:
    return base64.urlsafe_b64encode(json.dumps([timestamp, event_id]).encode()).decode().rstrip("=")


def nested(levels: int) -> dict[str, Any]:
    value: dict[str, Any] = {}
    for _ in range(levels):
        value = {"a": value}
    return value


def error_fields(response: Any, status: int = 400) -> list[str]:
    assert response.status_code == status, response.content
    body = response.json()
    assert body["error"]["code"] == "validation_error"
    return [detail["field"] for detail in body["error"]["details"]]


def store_what_the_api_enqueued() -> None:
    message = take_one_message()
    args, kwargs, _embed = message.payload
    process_batch(*args, **kwargs)  # the real task body, default pipeline and store


# --- query and path parameters --------------------------------------------------------------------


@pytest.mark.parametrize("path", ["/api/ingestion-warnings", "/api/ledger", "/api/events"])
def test_a_format_query_parameter_is_not_a_renderer_override(client: Client, acme: Actor, path: str) -> None:
    # DRF's URL_FORMAT_OVERRIDE answered 404 for `?format=1`; the API renders JSON whatever it asks.
    response = client.get(path, {"format": "1"}, **acme.headers)
    assert response.status_code == 200, response.content
    assert response["Content-Type"] == "application/json"
    assert response.json()


def test_a_ledger_bound_beyond_year_9999_in_utc_is_a_400(client: Client, acme: Actor) -> None:
    response = client.get("/api/ledger", {"until": "9999-12-31T23:59:59-01:00"}, **acme.headers)
    assert error_fields(response) == ["until"]
    response = client.get("/api/ledger", {"since": "0001-01-01T00:00:00+01:00"}, **acme.headers)
    assert error_fields(response) == ["since"]


def test_a_cursor_holding_a_time_beyond_year_9999_is_a_400(client: Client, acme: Actor) -> None:
    cursor = cursor_of("9999-12-31T23:59:59-01:00", "e-1")
    assert error_fields(client.get("/api/events", {"cursor": cursor}, **acme.headers)) == ["cursor"]


def test_a_cursor_holding_an_id_that_can_never_be_stored_is_a_400(client: Client, acme: Actor) -> None:
    cursor = cursor_of("2026-11-26T10:00:00.000000Z", "a\x00b")
    assert error_fields(client.get("/api/events", {"cursor": cursor}, **acme.headers)) == ["cursor"]


@pytest.mark.parametrize("path", ["/api/events/a%00b", "/api/users/a%00b/score"])
def test_an_id_with_a_nul_is_not_found(client: Client, acme: Actor, path: str) -> None:
    response = client.get(path, **acme.headers)
    assert response.status_code == 404, response.content
    assert response.json()["error"]["code"] == "not_found"


def test_a_nul_in_a_query_filter_is_a_400(client: Client, acme: Actor) -> None:
    assert error_fields(client.get("/api/events", {"user_id": "a\x00b"}, **acme.headers)) == ["user_id"]
    assert error_fields(client.get("/api/fraud/alerts", {"user_id": "a\x00b"}, **acme.headers)) == ["user_id"]


# --- bodies ---------------------------------------------------------------------------------------


def test_properties_nested_400_levels_deep_are_a_400_naming_properties(client: Client, acme: Actor) -> None:
    body = {"event_type": "click", "user_id": "u-1", "properties": nested(400)}
    assert len(json.dumps(body)) < 3000
    assert error_fields(post(client, acme, body)) == ["properties"]


def test_an_event_nested_past_the_json_encoders_limit_in_a_large_batch_is_rejected(
    client: Client, acme: Actor
) -> None:
    deep = {"event_type": "click", "user_id": "u-1", "properties": nested(300)}
    filler = {"event_type": "click", "user_id": "u-2", "properties": {"pad": "x" * 30_000}}
    response = post(client, acme, {"events": [deep, filler]}, path="/api/events/batch")
    assert response.status_code == 202, response.content
    assert [item["errors"][0]["field"] for item in response.json()["rejected"]] == ["properties"]


@pytest.mark.parametrize(
    ("event", "field"),
    [
        ({"event_type": "click", "user_id": "u\x00"}, "user_id"),
        ({"event_type": "click", "user_id": "u", "session_id": "s\x00"}, "session_id"),
        ({"event_type": "click", "user_id": "u", "properties": {"k": "v\x00"}}, "properties.k"),
        (
            {"event_type": "click", "user_id": "u", "properties": {"k": [1, {"x": "\x00"}]}},
            "properties.k[1].x",
        ),
        ({"event_type": "click", "user_id": "u", "properties": {"k\x00": 1}}, "properties.k\\u0000"),
    ],
)
def test_a_nul_character_is_a_400_with_its_field_path(
    client: Client, acme: Actor, event: dict[str, Any], field: str
) -> None:
    assert error_fields(post(client, acme, event)) == [field]


def test_a_timestamp_in_year_1_is_stored_as_sent(client: Client, acme: Actor) -> None:
    response = post(
        client, acme, {"event_type": "click", "user_id": "u-1", "timestamp": "0001-01-01T00:00:00Z"}
    )
    assert response.status_code == 202, response.content
    store_what_the_api_enqueued()

    assert not DeadLetter.objects.exists()
    stored = get_event_store().get(tenant="acme", event_id=response.json()["event_id"])
    assert stored is not None
    assert stored["timestamp"] == "0001-01-01T00:00:00.000000Z" and stored["timestamp_clamped"] is False
    assert StoredEvent.objects.count() == 1


def test_a_nul_in_the_user_agent_is_dropped_not_stored(client: Client, acme: Actor) -> None:
    response = client.post(
        "/api/events",
        data=json.dumps({"event_type": "click", "user_id": "u-1"}),
        content_type="application/json",
        HTTP_USER_AGENT="bot\x00/1.0",
        **acme.headers,
    )
    assert response.status_code == 202
    store_what_the_api_enqueued()
    stored = get_event_store().get(tenant="acme", event_id=response.json()["event_id"])
    assert stored is not None and stored["user_agent"] == "bot/1.0"
