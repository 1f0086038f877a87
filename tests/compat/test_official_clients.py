"""The official Segment and PostHog Python clients, unmodified, against a live CloudScale.

A real gunicorn (the production config) and a real Celery worker on this run's embedded Redis;
the SDKs only get their `host` pointed at it. Each test checks where the events end up: the event
store, `GET /api/events`, the loss ledger and the ingestion warnings.
"""

from __future__ import annotations

import json
import threading
import urllib.request
import uuid
from collections.abc import Iterator
from typing import Any

import pytest
from django.db import connections

from events.models import StoredEvent
from tests.conftest import Actor, EmbeddedRedis, LiveProcess, start_worker, wait_until
from tests.faults.harness import ApiServer

posthog = pytest.importorskip("posthog")
segment_analytics = pytest.importorskip("segment.analytics")

pytestmark = [pytest.mark.e2e, pytest.mark.django_db(transaction=True)]


@pytest.fixture(scope="module")
def live_stack(django_db_setup: None, tmp_path_factory: pytest.TempPathFactory) -> Iterator[ApiServer]:
    """One API process and one worker for the module (each test has its own tenant rows)."""
    tmp_path = tmp_path_factory.mktemp("sdk-live")
    api = ApiServer(tmp_path)
    api.start()
    worker: LiveProcess = start_worker(tmp_path, name="sdk")
    yield api
    worker.stop()
    api.stop()


def _get(api: ApiServer, path: str, key: str) -> Any:
    request = urllib.request.Request(f"{api.url}{path}", headers={"Authorization": f"Bearer {key}"})
    with urllib.request.urlopen(request, timeout=10) as response:
        return json.loads(response.read())


def _stored(tenant: str) -> dict[str, StoredEvent]:
    connections.close_all()  # see the worker's commits, not this connection's snapshot
    return {row.event_id: row for row in StoredEvent.objects.filter(tenant=tenant)}


def _wait_stored(tenant: str, n: int) -> dict[str, StoredEvent]:
    wait_until(lambda: len(_stored(tenant)) >= n, timeout=60, message=f"{n} stored events of {tenant}")
    return _stored(tenant)


def _ledger_totals(api: ApiServer, key: str) -> dict[str, int]:
    totals: dict[str, int] = _get(api, "/api/ledger", key)["totals"]
    return totals


def _segment(api: ApiServer, key: str, **options: Any) -> Any:
    errors: list[Exception] = []
    client = segment_analytics.Client(
        write_key=key, host=api.url, on_error=lambda exc, batch: errors.append(exc), **options
    )
    client.errors = errors
    return client


def test_it_takes_the_segment_client_in_sync_mode_and_in_background_mode(
    live_stack: ApiServer, acme: Actor
) -> None:
    api = live_stack
    ids = {name: str(uuid.uuid4()) for name in ("order", "custom", "page", "identify", "bad", "unmapped")}
    sync = _segment(api, acme.key, sync_mode=True, gzip=False)
    sync.track(
        user_id="u-1", event="Order Completed", message_id=ids["order"],
        properties={"order_id": "o-1", "total": 59.9, "currency": "eur"}, context={"ip": "203.0.113.9"},
    )  # fmt: skip
    sync.track(user_id="u-1", event="Video Played", message_id=ids["custom"], properties={"length": 12})
    background = _segment(api, acme.key, gzip=True, upload_interval=0.1)
    background.page(user_id="u-1", message_id=ids["page"], properties={"url": "https://shop.example/"})
    background.identify(user_id="u-1", message_id=ids["identify"], traits={"plan": "pro"})
    background.track(
        user_id="u-1", event="Order Completed", message_id=ids["unmapped"], properties={"total": 3}
    )
    background.track(anonymous_id="a-7", event="x" * 201, message_id=ids["bad"])  # name too long: a warning
    background.flush()
    background.join()
    assert background.errors == []

    stored = _wait_stored("acme", 5)
    assert set(stored) == {ids[n] for n in ("order", "custom", "page", "identify", "unmapped")}
    order = stored[ids["order"]]
    assert (order.event_type, order.custom, order.user_id) == ("purchase", False, "u-1")
    assert order.properties["amount"] == 59.9 and order.properties["currency"] == "EUR"
    assert order.context and order.context["library"]["name"] == "analytics-python"
    assert order.context["ip"] == "203.0.113.9"
    assert (stored[ids["custom"]].event_type, stored[ids["custom"]].custom) == ("Video Played", True)
    assert stored[ids["page"]].event_type == "page_view"
    assert (stored[ids["identify"]].event_type, stored[ids["identify"]].properties) == (
        "$identify",
        {"plan": "pro"},
    )
    assert (stored[ids["unmapped"]].event_type, stored[ids["unmapped"]].custom) == ("Order Completed", True)

    listed = _get(api, "/api/events?event_type=Video%20Played", acme.key)["results"]
    assert [e["event_id"] for e in listed] == [ids["custom"]] and listed[0]["custom"] is True
    detail = _get(api, f"/api/events/{ids['order']}", acme.key)
    assert detail["context"]["library"]["name"] == "analytics-python"
    totals = _ledger_totals(api, acme.key)
    assert (totals["received"], totals["accepted"], totals["rejected"]) == (6, 5, 1)
    wait_until(lambda: _ledger_totals(api, acme.key)["pending"] == 0, message="ledger pending 0")
    warnings = _get(api, "/api/ingestion-warnings", acme.key)["results"]
    assert {(w["code"], w["event_id"]) for w in warnings} == {
        ("invalid_event_name", ids["bad"]),
        ("not_mapped", ids["unmapped"]),
    }


def test_it_takes_the_posthog_client_in_sync_mode_and_in_background_mode(
    live_stack: ApiServer, acme: Actor
) -> None:
    api = live_stack
    ids = {name: str(uuid.uuid4()) for name in ("cart", "pageview", "custom", "nobody", "batched")}
    sync = posthog.Posthog(acme.key, host=api.url, sync_mode=True, gzip=True)
    sync.capture(
        "Product Added", distinct_id="d-1", uuid=ids["cart"], properties={"sku": "sku-9", "price": 4.5}
    )
    sync.capture(
        "$pageview",
        distinct_id="d-1",
        uuid=ids["pageview"],
        properties={"$current_url": "https://a.example/"},
    )
    background = posthog.Posthog(acme.key, host=api.url, gzip=False, flush_interval=0.1)
    background.capture("Level Finished", distinct_id="d-2", uuid=ids["custom"], properties={"level": 3})
    background.capture("y" * 201, distinct_id="d-2", uuid=ids["nobody"])  # name too long: a warning
    background.capture("Checkout Started", distinct_id="d-2", uuid=ids["batched"])
    background.flush()
    background.shutdown()
    sync.shutdown()

    stored = _wait_stored("acme", 4)
    assert set(stored) == {ids[n] for n in ("cart", "pageview", "custom", "batched")}
    cart = stored[ids["cart"]]
    assert cart.event_type == "add_to_cart"
    assert (cart.properties["product_id"], cart.properties["quantity"], cart.properties["price"]) == (
        "sku-9",
        1,
        4.5,
    )
    assert cart.context and cart.context["$lib"] == "posthog-python"
    assert stored[ids["pageview"]].properties["url"] == "https://a.example/"
    assert (stored[ids["custom"]].event_type, stored[ids["custom"]].custom) == ("Level Finished", True)
    assert stored[ids["batched"]].event_type == "checkout_started"
    totals = _ledger_totals(api, acme.key)
    assert (totals["received"], totals["accepted"], totals["rejected"]) == (5, 4, 1)
    warnings = _get(api, "/api/ingestion-warnings", acme.key)["results"]
    assert [(w["protocol"], w["code"], w["event_id"]) for w in warnings] == [
        ("posthog", "invalid_event_name", ids["nobody"])
    ]


def _restart_redis_later(server: EmbeddedRedis, after: float) -> threading.Thread:
    thread = threading.Timer(after, server.start)
    thread.start()
    return thread


def test_both_clients_retry_after_a_503_with_retry_after_and_nothing_is_stored_twice(
    live_stack: ApiServer, acme: Actor, embedded_redis_server: EmbeddedRedis
) -> None:
    api = live_stack
    segment_id, posthog_id = str(uuid.uuid4()), str(uuid.uuid4())
    seg = _segment(api, acme.key, gzip=True, upload_interval=0.1)
    ph = posthog.Posthog(acme.key, host=api.url, flush_interval=0.1, max_retries=6)
    embedded_redis_server.stop()  # the broker (and shared state) of the embedded stack
    try:
        # What the API answers meanwhile: 503 with Retry-After, in the shape the SDKs read.
        request = urllib.request.Request(
            f"{api.url}/v1/batch", data=b'{"batch":[{"type":"track","event":"e","userId":"u"}]}',
            headers={"Authorization": f"Bearer {acme.key}"},
        )  # fmt: skip
        with pytest.raises(urllib.error.HTTPError) as refused:
            urllib.request.urlopen(request, timeout=10)
        assert refused.value.code == 503 and int(refused.value.headers["Retry-After"]) >= 1
        assert json.loads(refused.value.read())["code"] == "broker_unavailable"
        restart = _restart_redis_later(embedded_redis_server, after=3.0)
        seg.track(user_id="u-5", event="Signed Up", message_id=segment_id)
        ph.capture("Signed Up", distinct_id="u-6", uuid=posthog_id)
        seg.flush()
        ph.flush()
        restart.join()
    finally:
        if embedded_redis_server.process is None or embedded_redis_server.process.poll() is not None:
            embedded_redis_server.start()
    seg.join()
    ph.shutdown()
    assert seg.errors == []

    stored = _wait_stored("acme", 2)
    assert set(stored) == {segment_id, posthog_id}
    assert {row.event_type for row in stored.values()} == {"signup"}
    totals = _ledger_totals(api, acme.key)
    assert totals["accepted"] == 2 and totals["stored"] == 2
    assert (
        totals["received"]
        == totals["accepted"] + totals["duplicate"] + totals["rejected"] + totals["rate_limited"]
    )
