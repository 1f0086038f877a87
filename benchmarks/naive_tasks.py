"""The naive baseline of `make bench`: one Celery task per event and one store write per event.

Registered only with workers started with `benchmarks.settings` (its CELERY_IMPORTS).
It runs the very steps of the platform's pipeline (decode → fraud → scoring → store → actions),
each called with a single event, so the comparison with `events.process_batch` measures batching
and nothing else: a message, a task, a fraud round trip, a scoring transaction and a one-row
INSERT per event.
"""

from __future__ import annotations

from typing import Any

from celery import shared_task

from events.pipeline import BatchMessage, RetryBatch, batch_process, default_pipeline
from events.tasks import BatchTask

TASK_NAME = "benchmarks.naive_process_one"


@shared_task(name=TASK_NAME, bind=True, base=BatchTask)
def naive_process_one(self: BatchTask, *, tenant: str, event: dict[str, Any], correlation_id: str) -> int:
    """kwargs: tenant (slug), event (one enriched event), correlation_id. Returns 1 if newly stored."""
    message = BatchMessage(tenant=tenant, events=[event], correlation_id=correlation_id)
    try:
        outcome = batch_process(
            message=message, attempt=self.request.retries + 1, pipeline=default_pipeline()
        )
    except RetryBatch as retry:  # same retry policy as the platform's task
        kwargs = {"tenant": tenant, "event": event, "correlation_id": correlation_id}
        raise self.retry(kwargs=kwargs, countdown=retry.countdown) from retry
    return len(outcome.stored)
