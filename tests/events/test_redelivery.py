"""At-least-once delivery with exactly-once effects: redelivered and crash-interrupted batches store
every event once.

The workers here run with a pause step (tests/faults/steps.py): each batch sleeps between its store
write and its ack, so a kill lands "mid-batch" (written, not acknowledged): the worst case for
duplicates.
"""

from __future__ import annotations

import signal
import uuid
from pathlib import Path
from typing import Any

import psutil
import pytest
from django.conf import settings

from cloudscale_project.celery import app
from events.models import StoredEvent
from tests.conftest import LiveProcess, child_env, start_worker, wait_until
from tests.events.pipeline_support import batch_kwargs, enriched_event, platform_counter
from tests.faults.steps import pause_env

FAULT_DELAY_SECONDS = "3"


def send_batch(kwargs: dict[str, Any], **options: Any) -> None:
    app.send_task("events.process_batch", kwargs=kwargs, queue=settings.QUEUE_NAME, **options)


def publish_batches(count: int, size: int) -> list[str]:
    ids: list[str] = []
    for _ in range(count):
        events = [enriched_event() for _ in range(size)]
        ids += [e["event_id"] for e in events]
        send_batch(batch_kwargs("acme", events))
    return sorted(ids)


def stored() -> list[str]:
    return sorted(StoredEvent.objects.filter(tenant="acme").values_list("event_id", flat=True))


def duplicates_seen() -> float:
    return platform_counter("cloudscale_events_processed_total", event_type="page_view", outcome="duplicate")


@pytest.mark.e2e
@pytest.mark.core
def test_the_same_message_delivered_twice_stores_its_events_once(live_worker: LiveProcess) -> None:
    events = [enriched_event() for _ in range(10)]
    kwargs = batch_kwargs("acme", events)
    task_id = str(uuid.uuid4())
    send_batch(kwargs, task_id=task_id)
    send_batch(kwargs, task_id=task_id)  # what a broker redelivery looks like to the worker

    wait_until(lambda: duplicates_seen() >= 10, timeout=60, message="the second delivery")

    assert stored() == sorted(e["event_id"] for e in events)
    assert (
        platform_counter("cloudscale_events_processed_total", event_type="page_view", outcome="stored") == 10
    )


@pytest.mark.e2e
@pytest.mark.faults
@pytest.mark.core
def test_a_pool_process_killed_mid_batch_gets_its_batch_redelivered_and_stored_once(
    transactional_db: None, tmp_path: Path
) -> None:
    worker = start_worker(tmp_path, env=child_env(**pause_env(FAULT_DELAY_SECONDS)))
    try:
        expected = publish_batches(count=4, size=25)
        wait_until(lambda: len(stored()) > 0, timeout=60, message="a batch written, not yet acked")

        pool = psutil.Process(worker.process.pid).children(recursive=True)
        assert pool, "a prefork worker has pool processes"
        for child in pool:
            child.send_signal(signal.SIGKILL)

        wait_until(lambda: stored() == expected, timeout=90, message="every event stored")
        # The killed batches were written before the kill: their redelivery found them stored.
        wait_until(lambda: duplicates_seen() >= 25, timeout=30, message="the redelivered batch")
        assert stored() == expected
        assert "WorkerLostError" in worker.log()
    finally:
        worker.stop()


@pytest.mark.e2e
@pytest.mark.faults
@pytest.mark.slow
def test_a_whole_worker_killed_mid_batch_has_its_messages_redelivered_and_stored_once(
    transactional_db: None, tmp_path: Path
) -> None:
    # On Redis the unacked messages of a dead worker come back after the visibility timeout: 10 s here.
    first = start_worker(
        tmp_path,
        name="doomed",
        env=child_env(**pause_env(FAULT_DELAY_SECONDS), CLOUDSCALE_VISIBILITY_TIMEOUT="10"),
    )
    second: LiveProcess | None = None
    try:
        expected = publish_batches(count=4, size=25)
        wait_until(lambda: len(stored()) > 0, timeout=60, message="a batch written, not yet acked")
        first.stop(signal.SIGKILL)  # the main process and its pool, at once
        assert len(stored()) < len(expected), "the kill left work unfinished"

        second = start_worker(tmp_path, name="heir", env=child_env(CLOUDSCALE_VISIBILITY_TIMEOUT="10"))
        wait_until(lambda: stored() == expected, timeout=120, message="every event stored")
        wait_until(lambda: duplicates_seen() >= 25, timeout=30, message="the redelivered written batch")
        assert stored() == expected
    finally:
        first.stop(signal.SIGKILL)
        if second is not None:
            second.stop()
