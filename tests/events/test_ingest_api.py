"""POST /api/events and /api/events/batch as docs/api.md describes them, on the real broker."""

from __future__ import annotations

import json
import uuid
from typing import Any

import orjson
import pytest
import redis
from celery import Celery
from django.conf import settings
from django.test import Client

import events.publishing
from cloudscale_project.celery import app
from events.ledger import late_commits
from tenants.services import tenant_set_active
from tests.conftest import Actor, EmbeddedRedis, wait_until

pytestmark = [pytest.mark.django_db, pytest.mark.core]

PURCHASE: dict[str, Any] = {
    "event_type": "purchase",
    "user_id": "u-42",
    "properties": {"order_id": "o-9", "amount": 59.90, "currency": "EUR"},
}


def post(client: Client, actor: Actor | None, body: Any, path: str = "/api/events", **extra: Any) -> Any:
    data = body if isinstance(body, str | bytes) else json.dumps(body)
    headers: dict[str, Any] = {**actor.headers} if actor else {}
    return client.post(
        path, data=data, content_type=extra.pop("content_type", "application/json"), **headers, **extra
    )


def queued_messages() -> list[list[Any]]:
    """The messages really waiting in the broker queue (drained, then put back is not needed).

    No waiting for late arrivals: a request is answered only after the broker has its message
    (events/publishing.py; on RabbitMQ the publisher confirm), so by the time a test reads the
    queue everything it published is there. A blocking read cost about 1 s per call (measured on
    the embedded Redis broker) waiting for a message that cannot come."""
    bodies = []
    with app.connection_for_read() as conn:
        queue = conn.SimpleQueue(settings.QUEUE_NAME)
        try:
            while True:
                message = queue.get(block=False)
                bodies.append(message.decode())
                message.ack()
        except queue.Empty:
            pass
        finally:
            queue.close()
    return bodies


def assert_error(response: Any, status: int, code: str, message: str) -> dict[str, Any]:
    """The one error shape (docs/api.md, "Errors") with exactly this status, code and message."""
    assert response.status_code == status, response.content
    body = response.json()
    assert body["error"]["code"] == code
    assert body["error"]["message"] == message
    assert isinstance(body["error"]["details"], list)
    assert body["correlation_id"] == response["X-Correlation-ID"]
    return body


def test_it_accepts_an_event_and_publishes_it_enriched(client: Client, acme: Actor) -> None:
    response = post(client, acme, PURCHASE, HTTP_USER_AGENT="shop-app/1.0")
    assert response.status_code == 202
    body = response.json()
    assert body["status"] == "accepted"
    assert body["correlation_id"] == response["X-Correlation-ID"]
    uuid.UUID(body["event_id"])

    [message] = queued_messages()
    _args, kwargs, _ = message
    [event] = kwargs["events"]
    assert kwargs["tenant"] == "acme" and kwargs["correlation_id"] == body["correlation_id"]
    assert event["event_id"] == body["event_id"]
    assert event["ip"] == "127.0.0.1"
    assert event["user_agent"] == "shop-app/1.0"
    assert event["timestamp"] == event["received_at"]
    assert event["skew_corrected"] is False


def test_it_keeps_a_valid_client_correlation_id(client: Client, acme: Actor) -> None:
    mine = str(uuid.uuid4())
    response = post(client, acme, PURCHASE, HTTP_X_CORRELATION_ID=mine)
    assert response["X-Correlation-ID"] == mine
    assert response.json()["correlation_id"] == mine
    invalid = post(client, acme, PURCHASE, HTTP_X_CORRELATION_ID="<script>")
    assert invalid["X-Correlation-ID"] != "<script>"


def test_it_corrects_client_clock_skew_from_sent_at(client: Client, acme: Actor) -> None:
    event = {**PURCHASE, "timestamp": "2020-01-01T10:00:00Z", "sent_at": "2020-01-01T10:05:00Z"}
    assert post(client, acme, event).status_code == 202
    [message] = queued_messages()
    stored = message[1]["events"][0]
    assert stored["client_timestamp"] == "2020-01-01T10:00:00Z"
    assert stored["skew_corrected"] is True
    # the event happened 5 minutes before the client sent it, by the server's clock
    from cloudscale_project.timeutil import parse_iso

    delta = parse_iso(stored["received_at"]) - parse_iso(stored["timestamp"])
    assert delta.total_seconds() == pytest.approx(300, abs=0.001)


def test_it_clamps_timestamps_far_in_the_future(client: Client, acme: Actor) -> None:
    assert post(client, acme, {**PURCHASE, "timestamp": "2999-01-01T00:00:00Z"}).status_code == 202
    [message] = queued_messages()
    stored = message[1]["events"][0]
    assert stored["timestamp"] == stored["received_at"]
    assert stored["timestamp_clamped"] is True


def test_a_repeat_is_a_duplicate_and_is_not_published_again(client: Client, acme: Actor) -> None:
    event = {**PURCHASE, "event_id": str(uuid.uuid4())}
    assert post(client, acme, event).json()["status"] == "accepted"
    again = post(client, acme, event)
    assert again.status_code == 202
    assert again.json() == {**again.json(), "status": "duplicate", "event_id": event["event_id"]}
    assert len(queued_messages()) == 1


def test_the_same_event_id_in_two_tenants_is_two_events(client: Client, acme: Actor, globex: Actor) -> None:
    event = {**PURCHASE, "event_id": str(uuid.uuid4())}
    assert post(client, acme, event).json()["status"] == "accepted"
    assert post(client, globex, event).json()["status"] == "accepted"


# --- batch receipts -----------------------------------------------------------------------------


def test_every_event_of_a_batch_gets_exactly_one_receipt(client: Client, acme: Actor) -> None:
    seen = str(uuid.uuid4())
    assert post(client, acme, {**PURCHASE, "event_id": seen}).status_code == 202
    repeated = str(uuid.uuid4())
    batch = [
        {**PURCHASE, "event_id": seen},  # 0: seen before -> duplicate
        {"event_type": "login", "user_id": "u-1", "event_id": repeated},  # 1: accepted
        {"event_type": "login", "user_id": "u-1", "event_id": repeated},  # 2: repeat within batch
        {"event_type": "purchase", "user_id": "u-1", "properties": {"amount": -1}},  # 3: invalid
        {"event_type": "teleport", "user_id": "u-1"},  # 4: unknown type
        "not an object",  # 5
        {"event_type": "page_view", "user_id": "u-2", "properties": {"url": "https://x.example"}},  # 6
    ]
    response = post(client, acme, {"events": batch}, path="/api/events/batch")
    assert response.status_code == 202
    body = response.json()
    assert body["accepted"] == 2 == len(body["event_ids"])
    assert body["duplicates"] == [{"index": 0, "event_id": seen}, {"index": 2, "event_id": repeated}]
    rejected = {r["index"]: r["errors"] for r in body["rejected"]}
    assert sorted(rejected) == [3, 4, 5]
    fields = {e["field"] for e in rejected[3]}
    assert {"properties.amount", "properties.order_id", "properties.currency"} <= fields
    assert rejected[4][0]["field"] == "event_type"
    indexes = [0, 2, *rejected, *(i for i in (1, 6))]
    assert sorted(indexes) == list(range(len(batch)))
    messages = queued_messages()
    assert len(messages) == 2  # the single POST and the batch: one message per request
    assert len(messages[1][1]["events"]) == 2


def test_a_batch_with_no_valid_event_is_a_400_with_the_rejected_list(client: Client, acme: Actor) -> None:
    response = post(
        client, acme, {"events": [{"event_type": "nope", "user_id": "u"}, {}]}, path="/api/events/batch"
    )
    body = assert_error(response, 400, "validation_error", "No event of the batch is valid.")
    assert [r["index"] for r in body["rejected"]] == [0, 1]
    assert queued_messages() == []


# --- the error table ------------------------------------------------------------------------------


def test_it_names_the_invalid_field_in_a_400_validation_error(client: Client, acme: Actor) -> None:
    bad = {**PURCHASE, "properties": {"order_id": "o-1", "amount": "lots", "currency": "EUR"}}
    body = assert_error(post(client, acme, bad), 400, "validation_error", "The event is invalid.")
    assert body["error"]["details"][0]["field"] == "properties.amount"


@pytest.mark.parametrize(
    ("event", "field"),
    [
        ({"event_type": "page_view", "user_id": "u"}, "properties.url"),
        ({"event_type": "search", "user_id": "u", "properties": {}}, "properties.query"),
        ({"event_type": "add_to_cart", "user_id": "u", "properties": {"product_id": "p", "quantity": 0, "price": 1}},
         "properties.quantity"),
        ({"event_type": "remove_from_cart", "user_id": "u", "properties": {"product_id": "p", "quantity": 1,
          "price": -1}}, "properties.price"),
        ({"event_type": "purchase", "user_id": "u", "properties": {"order_id": "o", "amount": 1, "currency": "eur"}},
         "properties.currency"),
        ({"event_type": "login", "user_id": ""}, "user_id"),
        ({"event_type": "login", "user_id": "u" * 129}, "user_id"),
        ({"user_id": "u"}, "event_type"),
        ({"event_type": "login", "user_id": "u", "timestamp": "yesterday"}, "timestamp"),
        ({"event_type": "login", "user_id": "u", "properties": {f"k{i}": i for i in range(65)}}, "properties"),
        ({"event_type": "login", "user_id": "u", "properties": {"a": {"b": {"c": {"d": {"e": {"f": 1}}}}}}},
         "properties"),
        ({"event_type": "login", "user_id": "u", "surprise": 1}, "surprise"),
    ],
)  # fmt: skip
def test_it_enforces_each_catalog_rule(
    client: Client, acme: Actor, event: dict[str, Any], field: str
) -> None:
    body = assert_error(post(client, acme, event), 400, "validation_error", "The event is invalid.")
    assert field in [d["field"] for d in body["error"]["details"]]


def test_it_answers_400_malformed_json_to_a_body_that_is_not_json(client: Client, acme: Actor) -> None:
    with pytest.raises(orjson.JSONDecodeError) as parse_error:  # the parser's own words, whatever its version
        orjson.loads("{not json")
    body = assert_error(
        post(client, acme, "{not json"),
        400,
        "malformed_json",
        f"request body is not valid JSON: {parse_error.value}",
    )
    assert body["error"]["details"] == [{"field": "body", "message": body["error"]["message"]}]


def test_it_answers_401_without_a_key_and_with_a_wrong_key(client: Client, acme: Actor) -> None:
    response = post(client, None, PURCHASE)
    assert_error(response, 401, "not_authenticated", "Authentication credentials were not provided.")
    assert response["WWW-Authenticate"] == 'Bearer realm="api"'
    wrong = Actor("acme", "cs_wrong")
    assert_error(post(client, wrong, PURCHASE), 401, "authentication_failed", "Invalid API key.")


def test_it_also_takes_the_key_as_x_api_key(client: Client, acme: Actor) -> None:
    response = client.post("/api/events", data=json.dumps(PURCHASE), content_type="application/json",
                           HTTP_X_API_KEY=acme.key)  # fmt: skip
    assert response.status_code == 202


def test_it_answers_403_to_a_disabled_tenant(client: Client, acme: Actor) -> None:
    tenant_set_active(slug="acme", active=False)
    assert_error(post(client, acme, PURCHASE), 403, "permission_denied", "Tenant 'acme' is disabled.")


def test_it_answers_413_to_a_body_over_1_mib(client: Client, acme: Actor) -> None:
    big = {"events": [{**PURCHASE, "properties": {**PURCHASE["properties"], "pad": "x" * 30_000}}] * 40}
    size = len(json.dumps(big))
    assert_error(
        post(client, acme, big, path="/api/events/batch"),
        413,
        "payload_too_large",
        f"request body is {size} bytes; the limit is 1048576 (1 MiB)",
    )


def test_it_answers_413_to_a_batch_of_more_than_500_events(client: Client, acme: Actor) -> None:
    events = [{"event_type": "login", "user_id": "u"}] * 501
    assert_error(
        post(client, acme, {"events": events}, path="/api/events/batch"),
        413,
        "payload_too_large",
        "a batch may hold at most 500 events, got 501",
    )


def test_it_answers_413_to_an_event_over_32_kib_and_rejects_it_inside_a_batch(
    client: Client, acme: Actor
) -> None:
    big = {**PURCHASE, "properties": {**PURCHASE["properties"], "pad": "x" * 33_000}}
    size = len(json.dumps(big))
    assert_error(
        post(client, acme, big),
        413,
        "payload_too_large",
        f"an event may be at most 32768 bytes (32 KiB), got {size}",
    )
    batch = post(client, acme, {"events": [big, PURCHASE]}, path="/api/events/batch").json()
    assert batch["accepted"] == 1 and batch["rejected"][0]["index"] == 0


def test_it_answers_415_to_a_body_that_is_not_declared_json(client: Client, acme: Actor) -> None:
    assert_error(post(client, acme, "a=b", content_type="application/x-www-form-urlencoded"), 415,
                 "unsupported_media_type",
                 "Content-Type must be application/json, got 'application/x-www-form-urlencoded'")  # fmt: skip


def test_it_answers_429_with_retry_after_when_the_ip_bucket_is_empty(
    client: Client, acme: Actor, settings: Any
) -> None:
    settings.RATE_LIMIT_PER_IP_CAPACITY = 3
    settings.RATE_LIMIT_PER_IP_REFILL_PER_SECOND = 0.01
    statuses = [post(client, acme, PURCHASE).status_code for _ in range(5)]
    assert statuses == [202, 202, 202, 429, 429]
    response = post(client, acme, PURCHASE)
    retry_after = response["Retry-After"]
    assert_error(
        response,
        429,
        "rate_limited",
        f"Rate limit of this client address exceeded; retry in {retry_after} s.",
    )
    assert int(retry_after) >= 1
    assert response["RateLimit-Limit"] == "3" and response["RateLimit-Remaining"] == "0"


def test_it_puts_rate_limit_headers_on_every_events_response(client: Client, acme: Actor) -> None:
    for response in (post(client, acme, PURCHASE), post(client, None, PURCHASE), post(client, acme, "{")):
        assert {"RateLimit-Limit", "RateLimit-Remaining", "RateLimit-Reset"} <= set(response.headers)


def test_it_answers_503_when_the_broker_is_down_and_accepts_the_retry_not_as_a_duplicate(
    client: Client, acme: Actor, monkeypatch: pytest.MonkeyPatch
) -> None:
    event = {**PURCHASE, "event_id": str(uuid.uuid4())}
    monkeypatch.setattr(events.publishing, "app", Celery(broker="redis://127.0.0.1:1/0"))
    response = post(client, acme, event)
    assert_error(
        response,
        503,
        "broker_unavailable",
        "The event could not be durably published; nothing was accepted. Retry later.",
    )
    assert response["Retry-After"] == str(settings.BROKER_RETRY_AFTER_SECONDS)
    monkeypatch.undo()
    # The API could not ask the broker whether the publish reached it (on Redis, its receipt):
    # the id stays reserved until the broker answers that it did not.
    wait_until(lambda: late_commits.flush() == 0, timeout=10, message="the failed publish resolved")
    retry = post(client, acme, event)
    assert retry.status_code == 202 and retry.json()["status"] == "accepted"
    assert len(queued_messages()) == 1


def test_it_answers_503_never_202_while_the_embedded_redis_is_stopped(
    client: Client, acme: Actor, embedded_redis_server: EmbeddedRedis
) -> None:
    if not settings.BROKER_URL.startswith(settings.EMBEDDED_REDIS_URL):
        pytest.skip("this variant's broker is not the embedded Redis")
    embedded_redis_server.stop()
    try:
        for _ in range(3):
            assert_error(
                post(client, acme, PURCHASE),
                503,
                "broker_unavailable",
                "The event could not be durably published; nothing was accepted. Retry later.",
            )
    finally:
        embedded_redis_server.start()
    assert post(client, acme, PURCHASE).status_code == 202


def test_the_ledger_balances_and_is_tenant_scoped(client: Client, acme: Actor, globex: Actor) -> None:
    event = {**PURCHASE, "event_id": str(uuid.uuid4())}
    post(client, acme, event)
    post(client, acme, event)
    post(client, acme, {"events": [PURCHASE, {"event_type": "x", "user_id": "u"}]}, path="/api/events/batch")
    post(client, globex, PURCHASE)
    totals = client.get("/api/ledger", **acme.headers).json()["totals"]
    assert totals["received"] == 4
    assert (totals["accepted"], totals["duplicate"], totals["rejected"], totals["rate_limited"]) == (
        2,
        1,
        1,
        0,
    )
    assert (
        totals["received"]
        == totals["accepted"] + totals["duplicate"] + totals["rejected"] + totals["rate_limited"]
    )
    assert totals["pending"] == totals["accepted"] - totals["stored"] - totals["dead_lettered"]
    assert client.get("/api/ledger", **globex.headers).json()["totals"]["received"] == 1


def test_ingested_counter_counts_accepted_events_by_type_and_tenant(client: Client, acme: Actor) -> None:
    from cloudscale_project.metrics import EVENTS_INGESTED

    before = EVENTS_INGESTED.labels(event_type="purchase", tenant_id="acme")._value.get()
    post(client, acme, PURCHASE)
    assert EVENTS_INGESTED.labels(event_type="purchase", tenant_id="acme")._value.get() == before + 1


def test_the_state_redis_holds_dedup_keys_for_the_window(
    client: Client, acme: Actor, state_redis: redis.Redis
) -> None:
    event = {**PURCHASE, "event_id": str(uuid.uuid4())}
    post(client, acme, event)
    ttl = state_redis.ttl(f"seen:acme:{event['event_id']}")
    assert settings.DEDUP_WINDOW_SECONDS - 5 < ttl <= settings.DEDUP_WINDOW_SECONDS


def test_a_store_outage_on_a_read_is_a_503_with_retry_after(
    client: Client, acme: Actor, monkeypatch: pytest.MonkeyPatch
) -> None:
    from events.stores import get_event_store
    from events.stores.base import StoreUnavailable

    store = get_event_store()

    def unavailable(**kwargs: Any) -> Any:
        raise StoreUnavailable("throttled", retry_after=2.5)

    monkeypatch.setattr(store, "query", unavailable)
    monkeypatch.setattr(store, "count_stored_by_hour", unavailable)
    for path in ("/api/events", "/api/ledger"):
        response = client.get(path, **acme.headers)
        assert_error(response, 503, "store_unavailable", "The event store is unavailable; retry later.")
        assert response["Retry-After"] == "3"


def test_a_timestamp_beyond_year_1_in_utc_is_clamped_not_refused(client: Client, acme: Actor) -> None:
    response = post(
        client, acme, {"event_type": "click", "user_id": "u", "timestamp": "0001-01-01T00:00:00+00:01"}
    )
    assert response.status_code == 202
    [message] = queued_messages()
    stored = message[1]["events"][0]
    assert stored["timestamp"] == stored["received_at"] and stored["timestamp_clamped"] is True
