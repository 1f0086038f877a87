"""Queue depth is read from the broker itself, the same way on Redis and RabbitMQ."""

from __future__ import annotations

import contextlib
import uuid
from collections.abc import Iterator

import pytest
from django.conf import settings

from cloudscale_project.celery import app
from ops.queue_depth import queue_depth
from tests.conftest import require_service

RABBITMQ_URL = "amqp://guest:guest@127.0.0.1:5672//"


def _publish(n: int, *, queue: str, broker_url: str | None = None) -> None:
    """N real `events.process_batch` messages, published the way the API publishes them."""
    with app.connection_for_write(broker_url) as conn:
        for i in range(n):
            app.send_task(
                "events.process_batch",
                kwargs={"tenant": "acme", "events": [{"event_id": f"e-{i}"}], "correlation_id": "c"},
                queue=queue,
                connection=conn,
            )


@pytest.fixture
def scratch_queue() -> Iterator[str]:
    name = f"depth-test-{uuid.uuid4().hex[:10]}"
    yield name
    for url in (settings.BROKER_URL, f"{settings.EMBEDDED_REDIS_URL}/0", RABBITMQ_URL):
        with contextlib.suppress(Exception), app.connection_for_write(url) as conn:
            conn.ensure_connection(max_retries=1)
            # kombu-stubs types default_channel as the bare StdChannel, without the queue_* methods.
            conn.default_channel.queue_delete(name)  # type: ignore[attr-defined]


@pytest.mark.core
def test_it_counts_the_messages_waiting_in_the_ingestion_queue() -> None:
    assert queue_depth() == 0
    _publish(25, queue=settings.QUEUE_NAME)
    assert queue_depth() == 25


def test_it_counts_n_messages_on_the_embedded_redis(scratch_queue: str) -> None:
    url = f"{settings.EMBEDDED_REDIS_URL}/0"
    _publish(37, queue=scratch_queue, broker_url=url)
    assert queue_depth(queue=scratch_queue, broker_url=url) == 37


def test_it_counts_n_messages_on_rabbitmq(scratch_queue: str) -> None:
    require_service("RabbitMQ", RABBITMQ_URL)
    _publish(41, queue=scratch_queue, broker_url=RABBITMQ_URL)
    assert queue_depth(queue=scratch_queue, broker_url=RABBITMQ_URL) == 41


def test_it_reads_a_missing_queue_as_empty_on_redis_and_rabbitmq(scratch_queue: str) -> None:
    assert queue_depth(queue=scratch_queue, broker_url=f"{settings.EMBEDDED_REDIS_URL}/0") == 0
    require_service("RabbitMQ", RABBITMQ_URL)
    assert queue_depth(queue=scratch_queue, broker_url=RABBITMQ_URL) == 0
