"""At-least-once delivery with exactly-once effects: redelivered and crash-interrupted batches store
every event once.

The workers here run with a pause step (tests/faults/steps.py): each batch sleeps between its store
write and its ack, so a kill lands "mid-batch" (written, not acknowledged): the worst case for
duplicates.
"""

from __future__ import annotations

import signal
import time
import uuid
from pathlib import Path
from typing import Any

import psutil
import pytest
from django.conf import settings

from cloudscale_project.celery import app
from events.deadletters import deadletter_requeue
from events.models import DeadLetter, StoredEvent
from tests.conftest import LiveProcess, child_env, start_worker, wait_until
from tests.events.pipeline_support import (
    batch_kwargs,
    enriched_event,
    platform_counter,
    redelivered_duplicates,
)
from tests.faults.steps import pause_before_steps_env, pause_env

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


@pytest.mark.e2e
@pytest.mark.core
def test_the_same_message_delivered_twice_stores_its_events_once(live_worker: LiveProcess) -> None:
    events = [enriched_event() for _ in range(10)]
    kwargs = batch_kwargs("acme", events)
    task_id = str(uuid.uuid4())
    send_batch(kwargs, task_id=task_id)
    send_batch(kwargs, task_id=task_id)  # what a broker redelivery looks like to the worker

    wait_until(lambda: redelivered_duplicates() >= 10, timeout=60, message="the second delivery")

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
    pausing = tmp_path / "pausing"  # batches pause while it exists
    pausing.touch()
    worker = start_worker(tmp_path, env=child_env(**pause_env(FAULT_DELAY_SECONDS, while_file=pausing)))
    try:
        expected = publish_batches(count=4, size=25)
        wait_until(lambda: len(stored()) > 0, timeout=60, message="a batch written, not yet acked")

        pool = psutil.Process(worker.process.pid).children(recursive=True)
        assert pool, "a prefork worker has pool processes"
        for child in pool:
            child.send_signal(signal.SIGKILL)
        pausing.unlink()  # the kills have landed: the batches after them need not wait 3 s each

        wait_until(lambda: stored() == expected, timeout=90, message="every event stored")
        # The killed batches were written before the kill: their redelivery found them stored.
        wait_until(lambda: redelivered_duplicates() >= 25, timeout=30, message="the redelivered batch")
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
    # No gather: the four batches reach the pool alone, one a process, so the kill finds two still
    # waiting, unstored. Gathered, the three after the first would be stored together and all four
    # could be written (not yet acked) before the kill, which the first check below cannot tell.
    first = start_worker(
        tmp_path,
        name="doomed",
        env=child_env(
            **pause_env(FAULT_DELAY_SECONDS),
            CLOUDSCALE_VISIBILITY_TIMEOUT="10",
            CLOUDSCALE_WORKER_GATHER_MS="0",
        ),
    )
    second: LiveProcess | None = None
    try:
        expected = publish_batches(count=4, size=25)
        wait_until(lambda: len(stored()) > 0, timeout=60, message="a batch written, not yet acked")
        first.stop(signal.SIGKILL)  # the main process and its pool, at once
        assert len(stored()) < len(expected), "the kill left work unfinished"

        second = start_worker(tmp_path, name="heir", env=child_env(CLOUDSCALE_VISIBILITY_TIMEOUT="10"))
        wait_until(lambda: stored() == expected, timeout=120, message="every event stored")
        wait_until(
            lambda: redelivered_duplicates() >= 25, timeout=30, message="the redelivered written batch"
        )
        assert stored() == expected
    finally:
        first.stop(signal.SIGKILL)
        if second is not None:
            second.stop()


@pytest.mark.e2e
@pytest.mark.faults
@pytest.mark.core
def test_a_batch_that_kills_its_worker_every_time_becomes_dead_letters_after_the_loss_limit(
    transactional_db: None, tmp_path: Path
) -> None:
    # Each batch waits 2 s before its first step: the kills land before anything is stored. Two
    # losses are allowed here (CLOUDSCALE_MAX_WORKER_LOSSES), so the third delivery gives up.
    pausing = tmp_path / "pausing"  # batches pause while it exists
    pausing.touch()
    worker = start_worker(
        tmp_path,
        concurrency=1,
        env=child_env(**pause_before_steps_env(2, while_file=pausing), CLOUDSCALE_MAX_WORKER_LOSSES="2"),
    )
    try:
        events = [enriched_event() for _ in range(5)]
        task_id = str(uuid.uuid4())
        send_batch(batch_kwargs("acme", events), task_id=task_id)
        received = f"Task events.process_batch[{task_id}] received"
        for delivery in (1, 2):
            wait_until(
                lambda n=delivery: worker.log().count(received) == n,
                timeout=60,
                message=f"delivery {delivery} received",
            )
            time.sleep(0.5)  # the pool process has started the batch (it waits 2 s before storing)
            for child in psutil.Process(worker.process.pid).children(recursive=True):
                child.send_signal(signal.SIGKILL)  # what a segfault or the OOM killer does

        wait_until(lambda: DeadLetter.objects.count() == 5, timeout=60, message="the batch dead-lettered")
        assert stored() == [], "the batch never ran to its store write"
        letters = list(DeadLetter.objects.all())
        assert {(d.reason, d.attempts) for d in letters} == {("MaxRetriesExceeded", 2)}
        assert worker.log().count("WorkerLostError") >= 2

        # Requeued, each event travels alone; with nothing killing the worker now, all are stored
        # (and with no pause: five single-event batches on one process would wait 2 s each).
        pausing.unlink()
        deadletter_requeue(ids=[d.pk for d in letters])
        wait_until(
            lambda: stored() == sorted(e["event_id"] for e in events), timeout=90, message="the requeue"
        )
    finally:
        worker.stop()
