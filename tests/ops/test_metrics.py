"""GET /metrics: every metric of docs/api.md ("Metrics"), the API's own and the platform's, in one scrape."""

from __future__ import annotations

import json
import time
import uuid

import pytest
from django.test import Client
from prometheus_client.parser import text_string_to_metric_families
from prometheus_client.samples import Sample

from cloudscale_project.metrics import (
    EVENTS_INGESTED,
    INGESTION_DURATION,
    RATE_LIMIT_REJECTIONS,
    platform_incr,
    platform_incr_many,
    platform_set_gauge,
)
from tests.conftest import Actor, LiveProcess, wait_until
from tests.ops.workers import in_process_worker


def scrape(client: Client) -> dict[str, list[Sample]]:
    response = client.get("/metrics")
    assert response.status_code == 200
    assert response["Content-Type"].startswith("text/plain")
    samples: dict[str, list[Sample]] = {}
    for family in text_string_to_metric_families(response.content.decode()):
        for sample in family.samples:
            samples.setdefault(sample.name, []).append(sample)
    return samples


def value(samples: dict[str, list[Sample]], name: str, **labels: str) -> float:
    matching = [s.value for s in samples.get(name, []) if s.labels == labels]
    assert len(matching) == 1, f"{name}{labels} not exactly once in {samples.get(name)}"
    return matching[0]


def value_or_zero(samples: dict[str, list[Sample]], name: str, **labels: str) -> float:
    return sum(s.value for s in samples.get(name, []) if s.labels == labels)


@pytest.mark.django_db
def test_it_shows_every_documented_metric_with_its_labels(client: Client) -> None:
    tenant = f"t-{uuid.uuid4().hex[:8]}"
    before = scrape(client)
    EVENTS_INGESTED.labels(event_type="purchase", tenant_id=tenant).inc(3)
    INGESTION_DURATION.labels(event_type="purchase").observe(0.004)
    RATE_LIMIT_REJECTIONS.inc()
    platform_incr_many(
        "cloudscale_events_processed_total",
        [
            ({"event_type": "purchase", "outcome": "stored"}, 3),
            ({"event_type": "click", "outcome": "duplicate"}, 1),
        ],
    )
    platform_incr("cloudscale_dead_letters_total", {"reason": "UnknownEventType"})
    platform_incr("cloudscale_fraud_detected_total", {"event_type": "purchase"}, 2)
    platform_set_gauge("cloudscale_queue_depth", 1234)
    platform_set_gauge("cloudscale_worker_concurrency_target", 16)

    samples = scrape(client)

    assert value(samples, "cloudscale_events_ingested_total", event_type="purchase", tenant_id=tenant) == 3

    def grew(name: str, **labels: str) -> float:
        return value(samples, name, **labels) - value_or_zero(before, name, **labels)

    durations = "cloudscale_ingestion_duration_seconds"
    assert grew(durations + "_count", event_type="purchase") == 1
    assert grew(durations + "_sum", event_type="purchase") == pytest.approx(0.004)
    assert grew(durations + "_bucket", event_type="purchase", le="0.005") == 1
    assert grew(durations + "_bucket", event_type="purchase", le="0.0025") == 0
    assert grew("cloudscale_rate_limit_rejections_total") == 1
    assert value(samples, "cloudscale_events_processed_total", event_type="purchase", outcome="stored") == 3
    assert value(samples, "cloudscale_events_processed_total", event_type="click", outcome="duplicate") == 1
    assert value(samples, "cloudscale_dead_letters_total", reason="UnknownEventType") == 1
    assert value(samples, "cloudscale_fraud_detected_total", event_type="purchase") == 2
    assert value(samples, "cloudscale_queue_depth") == 1234
    assert value(samples, "cloudscale_worker_concurrency_target") == 16


@pytest.mark.e2e
def test_it_counts_real_traffic_from_the_api_and_the_workers(
    transactional_db: None, client: Client, acme: Actor
) -> None:
    before = scrape(client)
    body = {
        "events": [
            {"event_type": "page_view", "user_id": "u-1", "properties": {"url": "https://shop.example/"}},
            {"event_type": "page_view", "user_id": "u-2", "properties": {"url": "https://shop.example/a"}},
            {"event_type": "search", "user_id": "u-1", "properties": {"query": "shoes"}},
        ]
    }
    response = client.post("/api/events/batch", data=json.dumps(body), content_type="application/json",
                           **acme.headers)  # fmt: skip
    assert response.status_code == 202, response.content
    samples = scrape(client)

    def grew(name: str, **labels: str) -> float:
        return value(samples, name, **labels) - value_or_zero(before, name, **labels)

    assert grew("cloudscale_events_ingested_total", event_type="page_view", tenant_id="acme") == 2
    assert grew("cloudscale_events_ingested_total", event_type="search", tenant_id="acme") == 1
    for event_type in ("page_view", "search"):  # one observation per event type of the request
        assert grew("cloudscale_ingestion_duration_seconds_count", event_type=event_type) == 1

    with in_process_worker():
        wait_until(
            lambda: value_or_zero(scrape(client), "cloudscale_events_processed_total",
                                  event_type="page_view", outcome="stored") == 2,
            timeout=20, message="the worker's processed counter",
        )  # fmt: skip
    samples = scrape(client)
    assert value(samples, "cloudscale_events_processed_total", event_type="search", outcome="stored") == 1


@pytest.mark.django_db
def test_a_label_set_is_one_series_whatever_the_order_of_its_labels(client: Client) -> None:
    event_type = f"t-{uuid.uuid4().hex[:8]}"  # a series of its own
    platform_incr_many(
        "cloudscale_events_processed_total",
        [
            ({"event_type": event_type, "outcome": "stored"}, 2),
            ({"outcome": "stored", "event_type": event_type}, 3),
        ],
    )
    platform_incr("cloudscale_events_processed_total", {"outcome": "duplicate", "event_type": event_type})

    samples = scrape(client)
    assert value(samples, "cloudscale_events_processed_total", event_type=event_type, outcome="stored") == 5
    assert (
        value(samples, "cloudscale_events_processed_total", event_type=event_type, outcome="duplicate") == 1
    )


@pytest.mark.e2e
def test_it_shows_a_heartbeat_per_live_worker(client: Client, live_worker: LiveProcess) -> None:
    def heartbeats() -> list[Sample]:
        return scrape(client).get("cloudscale_worker_last_heartbeat_timestamp_seconds", [])

    wait_until(lambda: len(heartbeats()) == 1, timeout=10, message="a worker heartbeat")
    (beat,) = heartbeats()
    assert beat.labels["worker"].startswith("w1@")
    assert time.time() - 15 < beat.value <= time.time() + 1
    live_worker.stop()
    assert heartbeats() == []  # a clean stop removes the series; a crash leaves it to go stale
