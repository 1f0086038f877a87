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
from typing import Any, cast

import orjson
import pytest
from celery.app.trace import trace_task_ret
from celery.worker.request import create_request_cls  # type: ignore[attr-defined]  # not in the stubs
from kombu import Message
from kombu.serialization import dumps

from cloudscale_project.celery import app
from cloudscale_project.serialization import ORJSON_SERIALIZER
from events.message_bodies import (
    LEFT_TO_POOL_MIN_BYTES,
    BodyLeftToPool,
    body_left_to_pool,
    decoded_payload,
    leave_body_to_pool,
)
from events.models import StoredEvent
from events.publishing import TASK_NAME
from events.tasks import BatchRequest, _body_problem, process_batch
from tests.events.pipeline_support import batch_kwargs, enriched_event

pytestmark = [pytest.mark.django_db, pytest.mark.core]


class RecordingPool:
    """Celery's pool interface as the request calls it; keeps the job instead of running it."""

    def __init__(self) -> None:
        self.jobs: list[tuple[Any, tuple[Any, ...]]] = []

    def apply_async(self, target: Any, args: tuple[Any, ...], **_: Any) -> None:
        self.jobs.append((target, args))


def _message(kwargs: dict[str, Any], *, body: bytes | None = None, text: bool = False) -> Message:
    """A batch message as the API publishes it; `body` replaces its encoded body. Bytes, as Redis's
    transport gives it, or `text`, as kombu's RabbitMQ transport does."""
    task_id = str(uuid.uuid4())
    headers, properties, task_body, _ = app.amqp.as_task_v2(task_id, TASK_NAME, args=(), kwargs=kwargs)
    content_type, content_encoding, payload = dumps(task_body, serializer=ORJSON_SERIALIZER)
    raw = payload if body is None else body
    return Message(
        body=cast(str, raw.decode() if text and isinstance(raw, bytes) else raw),  # the stubs say str
        headers=headers,
        properties=properties,
        content_type=content_type,
        content_encoding=content_encoding,
        delivery_info={"exchange": "", "routing_key": "events-ingestion"},
    )


def _job_for(kwargs: dict[str, Any]) -> tuple[BatchRequest, tuple[Any, ...], Message]:
    message = _message(kwargs)
    request, job = _job_for_message(message)
    return request, job, message


def _job_for_message(message: Message) -> tuple[BatchRequest, tuple[Any, ...]]:
    pool = RecordingPool()
    request_class = create_request_cls(
        BatchRequest, process_batch, pool, "pytest@host", None, trace=trace_task_ret, app=app
    )
    request = request_class(message, app=app, task=process_batch)
    request.execute_using_pool(pool)
    [(_, job)] = pool.jobs
    return request, job


def _run_as_the_pool_process(job: tuple[Any, ...]) -> Any:
    name, task_id, request_dict, body, content_type, content_encoding = job
    return trace_task_ret(name, task_id, request_dict, body, content_type, content_encoding, app=app)


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


# --- big bodies left to the pool process (events/message_bodies.py) ---------------------------------


@pytest.mark.parametrize("text", [False, True], ids=["bytes", "text"])
def test_a_big_batch_is_decoded_by_the_pool_process_alone(text: bool) -> None:
    events = [enriched_event() for _ in range(200)]
    message = _message(batch_kwargs("acme", events), text=text)
    assert len(cast(str, message.body)) >= LEFT_TO_POOL_MIN_BYTES

    assert leave_body_to_pool(message)
    # kombu's memo of the decoded body answers for it, so Celery's strategy ('args' in payload) and
    # request read an empty protocol-2 body; if kombu stopped reading its memo, this would decode.
    assert isinstance(message.payload, BodyLeftToPool) and "args" not in message.payload
    request, job = _job_for_message(message)

    assert request.args == () and request.kwargs == {}
    _, _, request_dict, body, content_type, _ = job
    assert body == message.body and content_type == message.content_type
    assert "kwargs" not in request_dict
    # A dead letter's tenant, the one thing the main process may need, still comes from the body.
    assert decoded_payload(message)[1]["tenant"] == "acme"


@pytest.mark.django_db(transaction=True)  # the task closes the connection, as a pool process does
@pytest.mark.parametrize("text", [False, True], ids=["bytes", "text"])
def test_the_pool_process_stores_a_batch_left_to_it(text: bool) -> None:
    events = [enriched_event() for _ in range(120)]
    message = _message(batch_kwargs("acme", events), text=text)
    assert leave_body_to_pool(message)
    _, job = _job_for_message(message)

    _run_as_the_pool_process(job)

    stored = StoredEvent.objects.filter(tenant="acme").values_list("event_id", flat=True)
    assert sorted(stored) == sorted(e["event_id"] for e in events)


@pytest.mark.parametrize(
    ("body", "problem"),
    [
        (
            b"[" + b"x" * LEFT_TO_POOL_MIN_BYTES + b" not json",
            "message body could not be decoded: DecodeError",
        ),
        (
            orjson.dumps([[], {"padding": "x" * LEFT_TO_POOL_MIN_BYTES}]),
            "task body is not [args, kwargs, embed]",
        ),
        (
            orjson.dumps([[], {"padding": "x" * LEFT_TO_POOL_MIN_BYTES}, 7]),
            "task body is not [args, kwargs, embed]",
        ),
    ],
    ids=["not-json", "two-parts", "embed-not-a-mapping"],
)
@pytest.mark.parametrize("text", [False, True], ids=["bytes", "text"])
def test_a_bad_body_left_to_the_pool_fails_before_the_task_and_is_named(
    body: bytes, problem: str, text: bool
) -> None:
    message = _message(batch_kwargs("acme", []), body=body, text=text)
    assert leave_body_to_pool(message)
    _, job = _job_for_message(message)  # the main process builds the request without decoding

    with pytest.raises(Exception) as raised:
        _run_as_the_pool_process(
            job
        )  # as Celery's tracer runs it in the pool process: fails before the task runs

    found = _body_problem(message, raised.value)
    assert found is not None and found.startswith(problem)


def test_only_big_protocol_2_json_batches_are_left_to_the_pool() -> None:
    big = batch_kwargs("acme", [enriched_event() for _ in range(200)])

    small = _message(batch_kwargs("acme", [enriched_event()]))
    other_task = _message(big)
    other_task.headers["task"] = "events.purge_expired_events"
    protocol_1 = _message(big, body=orjson.dumps({"args": [], "kwargs": big}))
    other_type = _message(big)
    other_type.content_type = "application/x-python-serialize"
    no_id = _message(big)
    del no_id.headers["id"]

    for message in (small, other_task, protocol_1, other_type, no_id):
        assert not leave_body_to_pool(message)
        assert not body_left_to_pool(message)
    assert small.payload[1]["tenant"] == "acme"  # decoded here, as before
    assert leave_body_to_pool(_message(big))
