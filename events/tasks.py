"""Celery tasks of the events app: thin adapters over `events.pipeline` and the event store.

`events.process_batch` is the message contract between the API and the workers (keyword arguments
of JSON primitives: tenant, events, correlation_id). Its message is acknowledged only after the
batch is stored or dead-lettered (acks_late); a worker process that dies mid-batch gets it
redelivered (reject_on_worker_lost, and the broker's visibility timeout for a dead main process);
after `WORKER_LOSSES_MAX` such losses its events become dead letters instead (events/deliveries.py).
"""

from __future__ import annotations

import logging
from datetime import timedelta
from typing import Any, NoReturn

from billiard.einfo import ExceptionWithTraceback  # type: ignore[attr-defined]
from celery import Task, shared_task
from celery.exceptions import Reject, Retry
from celery.signals import worker_process_shutdown
from celery.worker.request import Request
from celery.worker.state import task_ready
from django.conf import settings
from django.utils import timezone
from kombu.exceptions import DecodeError

from events.coalescing import current_job
from events.consumer import NOT_A_TASK_BODY, dead_letter_message, undecodable_body
from events.deliveries import deliveries_flush, delivery_finished, delivery_started
from events.message_bodies import body_left_to_pool
from events.pipeline import (
    RetryBatch,
    batch_give_up_after_worker_losses,
    batch_process_message,
    countdown_for,
)
from events.publishing import TASK_NAME
from events.stores import get_event_store

logger = logging.getLogger(__name__)


@worker_process_shutdown.connect(weak=False, dispatch_uid="cs-deliveries-flush")
def _flush_delivery_counts(**_: Any) -> None:
    """A pool process that stops deletes the counts of its finished deliveries (events/deliveries.py)."""
    deliveries_flush()


# The decoded arguments in a Celery request's dict: the pool process decodes them from the body.
_DECODED_ARGUMENTS = frozenset({"args", "kwargs"})


class BatchRequest(Request):
    """A batch as the worker's main process hands it to a pool process: the body as it came.

    Celery's request keeps the arguments it decoded (for its events and logs) in its request dict,
    and the prefork pool pickles that dict to the pool process beside the raw body, which the pool
    process decodes again and whose arguments replace the dict's. For a 500-event batch that was
    500 events pickled by the main process and unpickled by the pool process, about 2 ms of CPU a
    message in the pool process alone, for arguments nothing reads (docs/benchmarks.md). The main
    process keeps them; only the copy for the pool leaves them out.
    """

    @property
    def request_dict(self) -> dict[str, Any]:
        return {key: value for key, value in super().request_dict.items() if key not in _DECODED_ARGUMENTS}

    def on_failure(self, exc_info: Any, send_failed_event: bool = True, return_ok: bool = False) -> None:
        """A body the main process left undecoded (events/message_bodies.py) and the pool process
        could not decode into `[args, kwargs, embed]`: a dead letter, as the consumer makes of a
        body it decoded itself. Celery would ack it away. Everything else is Celery's."""
        problem = None if return_ok else _body_problem(self.message, exc_info.exception)
        if problem is None:
            super().on_failure(exc_info, send_failed_event=send_failed_event, return_ok=return_ok)
            return
        task_ready(self)
        dead_letter_message(self.message, problem, connection_errors=self.connection_errors)


def _body_problem(message: Any, exc: BaseException) -> str | None:
    """Why the pool process could not start the task of a body left to it, if that was the failure.

    `return_ok` false means the failure came from outside Celery's tracer, which catches all that
    the task itself raises: here, from decoding the body and unpacking it (Celery's
    `fast_trace_task`), before the task ran. A lost or timed-out pool process fails with
    exceptions of its own."""
    if isinstance(exc, ExceptionWithTraceback):
        exc = exc.exc
    if not body_left_to_pool(message):
        return None
    if isinstance(exc, DecodeError):
        return undecodable_body(exc)
    if isinstance(exc, ValueError | TypeError):
        return NOT_A_TASK_BODY
    return None


class BatchTask(Task):
    """Delivery settings of the batch task, stated here rather than inherited from defaults."""

    Request = "events.tasks:BatchRequest"  # the pool process gets the body, not the arguments as well

    acks_late = True  # ack after the batch is stored or dead-lettered, never before
    reject_on_worker_lost = True  # a killed pool process puts the message back at once
    # A batch killed by the hard time limit goes back to the queue rather than being acked away;
    # the soft limit (SoftTimeLimitExceeded) normally ends it first as an ordinary retry.
    acks_on_timeout = False
    # Our own attempt counting decides when to give up (PROCESS_MAX_ATTEMPTS, then dead letters).
    max_retries = None


@shared_task(name=TASK_NAME, bind=True, base=BatchTask)
def process_batch(self: BatchTask, *args: Any, **kwargs: Any) -> dict[str, int]:
    """kwargs: tenant (slug), events (list of enriched events), correlation_id."""
    retries = self.request.retries
    attempt = retries + 1
    task_id = self.request.id  # None when the body is called directly (tests)
    job = current_job()  # several messages came to this process as one job (events/coalescing.py)
    member = job.member(task_id) if job is not None else None
    if member is not None:
        deliveries = member.deliveries  # the job counted them all at once
    else:
        deliveries = delivery_started(task_id=task_id, retries=retries) if task_id else None
    try:
        if deliveries is not None and deliveries > settings.WORKER_LOSSES_MAX:
            outcome = batch_give_up_after_worker_losses(args=args, kwargs=kwargs, losses=deliveries - 1)
        elif job is not None and member is not None and member.together:
            outcome = job.outcome(member)
        else:
            outcome = batch_process_message(args=args, kwargs=kwargs, attempt=attempt)
    except RetryBatch as retry:
        _send_retry(self, kwargs=retry.message.as_kwargs(retry.events), countdown=retry.countdown)
    except Exception as exc:
        # Not even a dead letter could be written (database down?): never ack such a batch away.
        # Keep retrying at the longest backoff; after the last attempt each retry ends in dead
        # letters as soon as the database answers again.
        logger.exception("batch could not be processed or dead-lettered on attempt %d", attempt)
        _send_retry(self, kwargs=kwargs, args=args, countdown=countdown_for(attempt=attempt, error=exc))
    finally:
        # Reached however the body ends, except when the process dies: that is what is counted.
        if task_id:
            delivery_finished(task_id=task_id, retries=retries)
    return outcome.counts()


def _send_retry(
    task: BatchTask, *, kwargs: dict[str, Any], countdown: float, args: tuple[Any, ...] = ()
) -> NoReturn:
    try:
        raise task.retry(args=args, kwargs=kwargs, countdown=countdown)
    except Retry:
        raise
    except Exception as exc:
        # The retry could not be published (broker trouble): requeue the original message
        # instead, so it is neither acked away nor lost.
        raise Reject(f"retry could not be published: {exc}", requeue=True) from exc


@shared_task(name="events.purge_expired_events", acks_late=True)
def purge_expired_events() -> int:
    """Beat: delete stored events older than EVENT_RETENTION_DAYS (Cosmos expires them by TTL)."""
    older_than = timezone.now() - timedelta(days=settings.EVENT_RETENTION_DAYS)
    deleted = get_event_store().purge_expired(older_than=older_than)
    logger.info("purged %d event(s) received before %s", deleted, older_than.isoformat())
    return deleted
