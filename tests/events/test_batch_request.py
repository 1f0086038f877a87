"""What the worker's main process hands a pool process for a batch: the body, not its events twice.

Celery's request keeps the arguments it decoded in its request dict, and the prefork pool pickles
that dict for the pool process beside the raw body. `BatchRequest` (events/tasks.py) leaves them
out of the pool's copy; the pool process decodes the body itself. These tests build the request as
the worker's strategy does, from a message encoded as the API publishes it, record the job the pool
would get, and run that job.
"""

from __future__ import annotations

import pickle
import uuid
from typing import Any

import pytest
from celery.app.trace import trace_task_ret
from celery.worker.request import create_request_cls  # type: ignore[attr-defined]  # not in the stubs
from kombu import Message
from kombu.serialization import dumps

from cloudscale_project.celery import app
from cloudscale_project.serialization import ORJSON_SERIALIZER
from events.models import StoredEvent
from events.publishing import TASK_NAME
from events.tasks import BatchRequest, process_batch
from tests.events.pipeline_support import batch_kwargs, enriched_event

pytestmark = [pytest.mark.django_db, pytest.mark.core]


class RecordingPool:
    """Celery's pool interface as the request calls it; keeps the job instead of running it."""

    def __init__(self) -> None:
        self.jobs: list[tuple[Any, tuple[Any, ...]]] = []

    def apply_async(self, target: Any, args: tuple[Any, ...], **_: Any) -> None:
        self.jobs.append((target, args))


def _message(kwargs: dict[str, Any]) -> Message:
    task_id = str(uuid.uuid4())
    headers, properties, body, _ = app.amqp.as_task_v2(task_id, TASK_NAME, args=(), kwargs=kwargs)
    content_type, content_encoding, payload = dumps(body, serializer=ORJSON_SERIALIZER)
    return Message(
        body=payload,
        headers=headers,
        properties=properties,
        content_type=content_type,
        content_encoding=content_encoding,
        delivery_info={"exchange": "", "routing_key": "events-ingestion"},
    )


def _job_for(kwargs: dict[str, Any]) -> tuple[BatchRequest, tuple[Any, ...], Message]:
    pool = RecordingPool()
    request_class = create_request_cls(
        BatchRequest, process_batch, pool, "pytest@host", None, trace=trace_task_ret, app=app
    )
    message = _message(kwargs)
    request = request_class(message, app=app, task=process_batch)
    request.execute_using_pool(pool)
    [(_, job)] = pool.jobs
    return request, job, message


def test_the_pool_process_gets_the_body_and_not_the_decoded_events_as_well() -> None:
    events = [enriched_event() for _ in range(200)]
    request, job, message = _job_for(batch_kwargs("acme", events))

    name, _, request_dict, body, content_type, _ = job
    assert name == TASK_NAME
    assert body == message.body and content_type == message.content_type
    assert "kwargs" not in request_dict and "args" not in request_dict
    assert request_dict["id"] == request.id and request_dict["retries"] == 0
    # The main process's request keeps what it decoded (Celery's events and logs read it there).
    assert [e["event_id"] for e in request.kwargs["events"]] == [e["event_id"] for e in events]
    # What crosses the pipe is the body and a few headers, not a second copy of 200 events.
    assert isinstance(body, bytes)
    assert len(pickle.dumps(job, protocol=pickle.HIGHEST_PROTOCOL)) < len(body) + 4096


@pytest.mark.django_db(transaction=True)  # the task closes the connection, as a pool process does
def test_the_job_the_pool_process_gets_stores_the_batch() -> None:
    events = [enriched_event() for _ in range(3)]
    _, job, _ = _job_for(batch_kwargs("acme", events))

    name, task_id, request_dict, body, content_type, content_encoding = job
    trace_task_ret(name, task_id, request_dict, body, content_type, content_encoding, app=app)

    stored = StoredEvent.objects.filter(tenant="acme").values_list("event_id", flat=True)
    assert sorted(stored) == sorted(e["event_id"] for e in events)
