"""End to end on the real broker and a real worker process: messages in, events and dead letters out."""

from __future__ import annotations

import json
import uuid
from collections.abc import Iterator
from typing import Any

import pytest
from django.conf import settings
from django.test import Client
from kombu.serialization import dumps

from cloudscale_project.celery import app
from cloudscale_project.serialization import ORJSON_CONTENT_TYPE
from events.message_bodies import LEFT_TO_POOL_MIN_BYTES
from events.models import DeadLetter
from tests.conftest import Actor, LiveProcess, start_worker, wait_until
from tests.events.pipeline_support import batch_kwargs, enriched_event, platform_counter, publish_raw

pytestmark = [pytest.mark.e2e, pytest.mark.core]


@pytest.fixture(scope="module")
def module_worker(django_db_setup: None, tmp_path_factory: pytest.TempPathFactory) -> Iterator[LiveProcess]:
    """One worker process for the module: starting and stopping one costs about 3 s, and these tests
    leave nothing behind in it. Each test waits until everything it sent is processed; the shared
    state (Redis) and the queue are emptied between tests (tests/conftest.py) and the database by
    `transactional_db`; the worker's per-process caches are versioned in that shared state."""
    worker = start_worker(tmp_path_factory.mktemp("pipeline-e2e"))
    yield worker
    worker.stop()


@pytest.fixture
def live_worker(module_worker: LiveProcess, transactional_db: None) -> LiveProcess:
    """The module's worker; the test's rows really commit, so that process sees them."""
    assert module_worker.process.poll() is None, module_worker.log()[-3000:]
    return module_worker


def send_batch(kwargs: dict[str, Any], **options: Any) -> None:
    app.send_task("events.process_batch", kwargs=kwargs, queue=settings.QUEUE_NAME, **options)


def listed_ids(client: Client, actor: Actor) -> list[str]:
    response = client.get("/api/events", {"limit": 1000}, **actor.headers)
    assert response.status_code == 200
    return [e["event_id"] for e in response.json()["results"]]


def test_it_stores_every_published_event_exactly_once(
    live_worker: LiveProcess, client: Client, acme: Actor
) -> None:
    batches = [[enriched_event(event_type="click", properties={}) for _ in range(20)] for _ in range(5)]
    for events in batches:
        send_batch(batch_kwargs("acme", events))
    expected = sorted(e["event_id"] for events in batches for e in events)

    wait_until(
        lambda: len(listed_ids(client, acme)) >= len(expected), timeout=60, message="100 stored events"
    )

    assert sorted(listed_ids(client, acme)) == expected
    assert platform_counter("cloudscale_events_processed_total", event_type="click", outcome="stored") == 100
    one = client.get(f"/api/events/{expected[0]}", **acme.headers)
    assert one.status_code == 200 and one.json()["event_type"] == "click"


def test_poison_messages_from_the_broker_become_dead_letters_and_good_events_are_stored(
    live_worker: LiveProcess, client: Client, acme: Actor
) -> None:
    good = [enriched_event(), enriched_event()]
    # 1. A batch mixing good events with a missing type, an unknown type and a non-object.
    send_batch(
        batch_kwargs(
            "acme",
            [
                good[0],
                {k: v for k, v in enriched_event().items() if k != "event_type"},
                enriched_event(event_type="teleport"),
                "just a string",
                good[1],
            ],
        )
    )
    # 2. Bytes that are not JSON at all, with no Celery headers.
    publish_raw(b"\x00\xffnot json {")
    # 3. JSON that is not a task message.
    publish_raw(b'{"event_type": "click", "user_id": "u-1"}')
    # 4. A task name no worker knows.
    app.send_task("events.no_such_task", kwargs={"tenant": "acme"}, queue=settings.QUEUE_NAME)
    # 5. A content type the workers do not accept.
    send_batch(batch_kwargs("acme", [enriched_event()]), serializer="pickle")
    # 6. The right task name over a body that is not [args, kwargs, embed].
    publish_raw(
        json.dumps({"tenant": "acme"}).encode(),
        headers={"task": "events.process_batch", "id": str(uuid.uuid4()), "lang": "py"},
    )

    wait_until(lambda: DeadLetter.objects.count() >= 8, timeout=60, message="8 dead letters")
    wait_until(lambda: len(listed_ids(client, acme)) >= 2, timeout=30, message="the good events")

    assert sorted(listed_ids(client, acme)) == sorted(e["event_id"] for e in good)
    letters = list(DeadLetter.objects.order_by("id"))
    assert len(letters) == 8
    by_error = {(d.reason, d.kind, d.error) for d in letters}
    assert ("MissingEventType", "event", "event_type is missing") in by_error
    assert ("UnknownEventType", "event", "unknown event_type 'teleport'") in by_error
    assert ("DeserializationFailed", "event", "event is a str, not an object") in by_error
    raw = [d for d in letters if d.kind == "raw"]
    assert {d.reason for d in raw} == {"DeserializationFailed"}
    assert len(raw) == 5
    assert any(bytes(d.payload) == b"\x00\xffnot json {" for d in raw), "kept byte-exact"
    assert any(d.error == "not a Celery task message (no task name)" for d in raw)
    unknown_task = next(d for d in raw if d.error == "unknown task 'events.no_such_task'")
    assert unknown_task.tenant == "acme"
    assert any(d.error.startswith("invalid task message: ContentDisallowed") for d in raw)
    assert any(d.error == "task body is not [args, kwargs, embed]" for d in raw)
    assert platform_counter("cloudscale_dead_letters_total", reason="DeserializationFailed") == 6

    # The consumer survived all of it: the next good batch is still processed.
    later = enriched_event()
    send_batch(batch_kwargs("acme", [later]))
    wait_until(lambda: later["event_id"] in listed_ids(client, acme), timeout=30, message="a later event")


def test_big_batch_bodies_are_decoded_by_the_pool_process_and_bad_ones_still_dead_lettered(
    live_worker: LiveProcess, client: Client, acme: Actor
) -> None:
    """A body of LEFT_TO_POOL_MIN_BYTES or more is decoded only by the pool process
    (events/message_bodies.py): a good one is stored, a bad one is kept byte-exact as a dead letter
    just as when the main process finds it bad."""
    padding = "x" * LEFT_TO_POOL_MIN_BYTES

    def task_headers() -> dict[str, Any]:
        return {"task": "events.process_batch", "id": str(uuid.uuid4()), "lang": "py"}

    not_json = b"[" + padding.encode() + b" not json"
    not_three = json.dumps([[], {"tenant": "acme", "events": [], "padding": padding}]).encode()
    publish_raw(not_json, content_type=ORJSON_CONTENT_TYPE, headers=task_headers())
    publish_raw(not_three, headers=task_headers())
    big = [enriched_event(event_type="click", properties={}) for _ in range(120)]
    assert len(dumps([[], batch_kwargs("acme", big), {}], serializer="orjson")[2]) >= LEFT_TO_POOL_MIN_BYTES
    send_batch(batch_kwargs("acme", big))

    wait_until(lambda: DeadLetter.objects.count() >= 2, timeout=60, message="2 dead letters")
    wait_until(lambda: len(listed_ids(client, acme)) >= len(big), timeout=60, message="the big batch")

    assert sorted(listed_ids(client, acme)) == sorted(e["event_id"] for e in big)
    letters = {bytes(d.payload): d for d in DeadLetter.objects.all()}
    assert set(letters) == {not_json, not_three}, "kept byte-exact"
    assert letters[not_json].error.startswith("message body could not be decoded: DecodeError")
    assert letters[not_three].error == "task body is not [args, kwargs, embed]"
    assert {d.reason for d in letters.values()} == {"DeserializationFailed"}
    assert {d.kind for d in letters.values()} == {"raw"}
    assert platform_counter("cloudscale_dead_letters_total", reason="DeserializationFailed") == 2
    assert platform_counter("cloudscale_events_processed_total", event_type="click", outcome="stored") == 120


def test_it_processes_messages_of_the_old_json_serializer_beside_orjson_ones(
    live_worker: LiveProcess, client: Client, acme: Actor
) -> None:
    """Messages queued before the switch to orjson (kombu's `json`) are still decoded and stored."""
    old = [enriched_event(event_type="click", properties={}) for _ in range(3)]
    new = [enriched_event(event_type="search", properties={"query": "shoes"}) for _ in range(3)]
    send_batch(batch_kwargs("acme", old), serializer="json")
    send_batch(batch_kwargs("acme", new))

    expected = sorted(e["event_id"] for e in old + new)
    wait_until(lambda: len(listed_ids(client, acme)) >= len(expected), timeout=60, message="6 stored events")
    assert sorted(listed_ids(client, acme)) == expected
    assert DeadLetter.objects.count() == 0


def test_it_publishes_batches_as_orjson() -> None:
    content_type, encoding, body = dumps({"tenant": "acme", "events": [{"n": 1}]}, app.conf.task_serializer)
    assert (content_type, encoding) == ("application/x-orjson", "utf-8")
    assert json.loads(body) == {"tenant": "acme", "events": [{"n": 1}]}
