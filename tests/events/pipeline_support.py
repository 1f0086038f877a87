"""Helpers of the worker-pipeline tests: enriched events, a store that fails on demand, the broker."""

from __future__ import annotations

import uuid
from collections.abc import Sequence
from datetime import timedelta
from typing import Any, cast

from django.conf import settings
from kombu import Connection, Consumer, Message, Producer

from cloudscale_project.celery import app
from cloudscale_project.metrics import PlatformCollector
from cloudscale_project.timeutil import isoformat_z, utcnow
from events.pipeline import BatchOutcome, Pipeline, RetryBatch, batch_process_message
from events.stores.base import Event, StoreUnavailable
from events.stores.orm import OrmEventStore


def enriched_event(tenant: str = "acme", **overrides: Any) -> Event:
    """An event as the API publishes it (docs/api.md, "Stored events")."""
    now = utcnow()
    event: Event = {
        "event_id": str(uuid.uuid4()),
        "event_type": "page_view",
        "user_id": "u-1",
        "session_id": "s-1",
        "properties": {"url": "https://shop.example/"},
        "timestamp": isoformat_z(now - timedelta(seconds=1)),
        "client_timestamp": None,
        "sent_at": None,
        "received_at": isoformat_z(now),
        "skew_corrected": False,
        "timestamp_clamped": False,
        "ip": "203.0.113.7",
        "user_agent": "pytest",
        "correlation_id": str(uuid.uuid4()),
        "tenant": tenant,
    }
    # `overrides` replace fields by name with whatever a test passes, which may be malformed on purpose.
    event.update(cast(Event, overrides))
    return event


def batch_kwargs(tenant: str, events: Sequence[Any], correlation_id: str | None = None) -> dict[str, Any]:
    return {"tenant": tenant, "events": list(events), "correlation_id": correlation_id or str(uuid.uuid4())}


class FlakyStore:
    """The real ORM store behind a fault switch: the first `failures` writes raise StoreUnavailable
    (every write while `failures` is None)."""

    name = "flaky-orm"

    def __init__(self, *, failures: int | None, retry_after: float | None = None) -> None:
        self.inner = OrmEventStore()
        self.failures = failures
        self.retry_after = retry_after
        self.write_calls = 0

    def write_many(self, events: Sequence[Event]) -> set[str]:
        self.write_calls += 1
        if self.failures is None or self.write_calls <= self.failures:
            raise StoreUnavailable("429 throttled by the store", retry_after=self.retry_after)
        return self.inner.write_many(events)

    def __getattr__(self, name: str) -> Any:
        return getattr(self.inner, name)


def run_like_the_task(
    kwargs: dict[str, Any], pipeline: Pipeline, *, max_deliveries: int = 20
) -> tuple[BatchOutcome, list[float]]:
    """Drive `batch_process_message` the way `events.process_batch` does across its retries."""
    countdowns: list[float] = []
    for attempt in range(1, max_deliveries + 1):
        try:
            return batch_process_message(
                args=(), kwargs=kwargs, attempt=attempt, pipeline=pipeline
            ), countdowns
        except RetryBatch as retry:
            countdowns.append(retry.countdown)
            kwargs = retry.message.as_kwargs(retry.events)
    raise AssertionError(f"still retrying after {max_deliveries} deliveries")


def platform_counter(name: str, **labels: str) -> float:
    """The current value of a platform-wide counter sample, as /metrics would show it."""
    for family in PlatformCollector().collect():
        if family.name == name.removesuffix("_total"):
            for sample in family.samples:
                if sample.name == name and all(sample.labels.get(k) == v for k, v in labels.items()):
                    return float(sample.value)
    return 0.0


def redelivered_duplicates() -> float:
    """Events the workers found already stored (a redelivered message's), counted as they ran."""
    return platform_counter("cloudscale_events_processed_total", event_type="page_view", outcome="duplicate")


def publish_raw(
    body: bytes, *, content_type: str = "application/json", headers: dict[str, Any] | None = None
) -> None:
    """Put bytes on the ingestion queue the way any broker client could: no Celery involved."""
    queue = app.amqp.queues[settings.QUEUE_NAME]
    with Connection(settings.CELERY_BROKER_URL) as conn:
        producer = Producer(conn.channel())
        producer.publish(
            body,
            exchange=queue.exchange,
            routing_key=queue.routing_key,
            declare=[queue],
            content_type=content_type,
            content_encoding="binary",
            headers=headers or {},
            retry=True,
        )


def take_one_message(timeout: float = 10.0) -> Message:
    """Fetch (and ack) one message from the ingestion queue, for tests that run the body themselves."""
    queue = app.amqp.queues[settings.QUEUE_NAME]
    received: list[Message] = []
    with Connection(settings.CELERY_BROKER_URL) as conn:
        # on_message: the raw message, undecoded, so poison bytes can be inspected too.
        with Consumer(conn, queues=[queue], on_message=received.append, prefetch_count=1):
            conn.drain_events(timeout=timeout)
        for message in received:
            message.ack()
    assert received, "no message on the ingestion queue"
    return received[0]
