"""Small batch messages that wait in a worker run as one job and one pipeline run, each message
still acked, retried and counted on its own (events/coalescing.py, docs/decisions.md)."""

from __future__ import annotations

import logging
import signal
import time
import uuid
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import orjson
import psutil
import pytest
from celery.exceptions import Retry
from django.conf import settings as django_settings
from pytest_django.fixtures import Settings as SettingsWrapper

from cloudscale_project.celery import app
from events.coalescing import JOB_MESSAGES_MAX, Coalescer, event_count, mergeable, run_coalesced
from events.message_bodies import LEFT_TO_POOL_MIN_BYTES, BodyLeftToPool
from events.models import DeadLetter, StoredEvent
from events.pipeline import BatchMessage, BatchOutcome, Pipeline, RetryBatch, batch_process_together
from events.publishing import EVENTS_HEADER, TASK_NAME, publish_events
from events.stores.base import Event, NewEventsHook
from events.stores.orm import OrmEventStore
from events.tasks import process_batch
from tests.conftest import LiveProcess, child_env, start_worker, wait_until
from tests.events.pipeline_support import (
    FlakyStore,
    batch_kwargs,
    enriched_event,
    platform_counter,
    take_one_message,
)
from tests.faults.steps import REFUSED_MARK, pause_before_steps_env

pytestmark = [pytest.mark.core]


@pytest.fixture(autouse=True)
def _tiny_backoff(settings: SettingsWrapper) -> None:
    settings.RETRY_BACKOFF_BASE_SECONDS = 0.01
    settings.RETRY_BACKOFF_MAX_SECONDS = 0.05


class CountingStore:
    """The ORM store, counting its writes."""

    def __init__(self) -> None:
        self.inner = OrmEventStore()
        self.writes = 0

    def write_many(self, events: Sequence[Event], *, then: NewEventsHook | None = None) -> set[str]:
        self.writes += 1
        return self.inner.write_many(events, then=then)

    def __getattr__(self, name: str) -> Any:
        return getattr(self.inner, name)


def message(*events: Any, tenant: str = "acme") -> BatchMessage:
    return BatchMessage(tenant=tenant, events=list(events), correlation_id=str(uuid.uuid4()))


def stored_ids(tenant: str = "acme") -> list[str]:
    return sorted(StoredEvent.objects.filter(tenant=tenant).values_list("event_id", flat=True))


def failing_before_store_for(bad_id: str) -> Any:
    def fraud_like(*, tenant: str, events: Sequence[Event]) -> None:
        if any(e["event_id"] == bad_id for e in events):
            raise RuntimeError("a step failed on one event")

    return fraud_like


@pytest.mark.django_db
def test_messages_run_together_store_every_event_in_one_write_and_keep_their_own_outcomes() -> None:
    a1, a2, b1, c1 = enriched_event(), enriched_event(), enriched_event(), enriched_event()
    bad = enriched_event(event_type="no_such_type")
    repeat = dict(a1)  # the same event in a second message: stored once, a duplicate there
    store = CountingStore()

    outcomes = batch_process_together(
        messages=[message(a1, a2), message(b1, bad), message(c1, repeat)], pipeline=Pipeline(store=store)
    )

    assert store.writes == 1
    assert stored_ids() == sorted(e["event_id"] for e in (a1, a2, b1, c1))
    assert all(isinstance(o, BatchOutcome) for o in outcomes)
    first, second, third = (o for o in outcomes if isinstance(o, BatchOutcome))
    assert (sorted(first.stored), first.duplicates, first.dead_lettered) == (
        sorted([a1["event_id"], a2["event_id"]]),
        [],
        0,
    )
    assert (second.stored, second.dead_lettered) == ([b1["event_id"]], 1)
    assert (third.stored, third.duplicates) == ([c1["event_id"]], [a1["event_id"]])
    assert DeadLetter.objects.get().event_id == bad["event_id"]
    assert (
        platform_counter("cloudscale_events_processed_total", event_type="page_view", outcome="stored") == 4
    )
    assert (
        platform_counter("cloudscale_events_processed_total", event_type="page_view", outcome="duplicate")
        == 1
    )


@pytest.mark.django_db
def test_a_transient_failure_retries_each_message_with_its_own_events() -> None:
    first, second = [enriched_event(), enriched_event()], [enriched_event()]

    outcomes = batch_process_together(
        messages=[message(*first), message(*second)], pipeline=Pipeline(store=FlakyStore(failures=None))
    )

    assert [type(o) for o in outcomes] == [RetryBatch, RetryBatch]
    retried = [o.events for o in outcomes if isinstance(o, RetryBatch)]
    assert retried == [first, second]
    assert stored_ids() == []


@pytest.mark.django_db
def test_a_failure_of_one_event_runs_each_message_alone_and_retries_only_its_message() -> None:
    good, other, bad = enriched_event(), enriched_event(), enriched_event()
    store = CountingStore()
    pipeline = Pipeline(store=store, before_store=(failing_before_store_for(bad["event_id"]),))

    outcomes = batch_process_together(
        messages=[message(good), message(bad), message(other)], pipeline=pipeline
    )

    assert isinstance(outcomes[0], BatchOutcome) and outcomes[0].stored == [good["event_id"]]
    assert isinstance(outcomes[1], RetryBatch) and outcomes[1].events == [bad]
    assert isinstance(outcomes[2], BatchOutcome) and outcomes[2].stored == [other["event_id"]]
    assert stored_ids() == sorted([good["event_id"], other["event_id"]])
    assert store.writes == 2  # the run together failed before its write; each good one wrote alone


def test_messages_of_different_tenants_are_not_run_together() -> None:
    with pytest.raises(ValueError, match="one tenant"):
        batch_process_together(
            messages=[message(enriched_event()), message(enriched_event("globex"), tenant="globex")],
            pipeline=Pipeline(store=OrmEventStore()),
        )


class FakeQos:
    """kombu's QoS as the consumer's prefetch: a count that held messages raise and give back."""

    def __init__(self, value: int) -> None:
        self.value = value

    def increment_eventually(self, n: int = 1) -> None:
        self.value += n

    def decrement_eventually(self, n: int = 1) -> None:
        self.value -= n


class NoFreeSlot:
    """A pool whose one process is busy: every message waits in the coalescer."""

    def __init__(self) -> None:
        self.waiters: list[Any] = []
        self.pool = type("Pool", (), {"num_processes": 1})()

    @property
    def semaphore(self) -> Any:
        return type("Semaphore", (), {"acquire": lambda _, callback: self.waiters.append(callback)})()


def waiting_request(*, events: int, left_to_pool: bool) -> Any:
    message = type("Message", (), {})()
    if left_to_pool:
        message._decoded_cache = BodyLeftToPool()
    request = type("Request", (), {})()
    request.id = str(uuid.uuid4())
    request.task_name = TASK_NAME
    request.message = message
    request.eta = None
    request.delivery_info = {}
    request.request_dict = {EVENTS_HEADER: events}
    request.kwargs = {} if left_to_pool else {"events": [{}] * events}
    return request


@pytest.mark.parametrize(
    ("left_to_pool", "header", "count", "runs_together"),
    [
        (True, 500, 500, True),  # a big body this process did not decode: sized by its header
        (True, None, 0, False),  # ... and without one (an older publisher's): it runs alone
        (True, "500", 0, False),  # a header that is not a count is no count
        (False, None, 500, True),  # a body decoded here is counted from its events
    ],
)
def test_a_message_is_sized_by_its_events_or_else_its_header(
    settings: SettingsWrapper, left_to_pool: bool, header: Any, count: int, runs_together: bool
) -> None:
    settings.WORKER_JOB_EVENTS = 2000
    request = waiting_request(events=500, left_to_pool=left_to_pool)
    request.request_dict = {} if header is None else {EVENTS_HEADER: header}

    assert event_count(request) == count
    assert mergeable(request) is runs_together


@pytest.mark.parametrize(
    ("events", "left_to_pool", "credited"), [(500, True, 4), (1, False, JOB_MESSAGES_MAX)]
)
def test_held_messages_add_to_the_prefetch_at_most_a_job_s_worth_a_pool_process(
    settings: SettingsWrapper, events: int, left_to_pool: bool, credited: int
) -> None:
    settings.WORKER_JOB_EVENTS = 2000
    qos = FakeQos(4)
    coalescer = Coalescer(controller=NoFreeSlot(), fallback=lambda request: None, qos=lambda: qos)
    for _ in range(40):
        coalescer(waiting_request(events=events, left_to_pool=left_to_pool))
    assert qos.value == 4 + credited


class TwoSlots:
    """A pool of two processes as the coalescer sees it: Celery's semaphore of slots, a timer it
    can hand a gather to, and what it sends (one message alone, or a job of several)."""

    def __init__(self) -> None:
        self.pool = self
        self.app = type("App", (), {"use_fast_trace_task": False})()
        self.num_processes = 2
        self.semaphore = self
        self.initial_value = self.value = 2
        self.alone: list[Any] = []
        self.jobs: list[list[str]] = []
        self.timers: list[Any] = []
        self.waiters: list[Any] = []

    # the semaphore
    def acquire(self, callback: Any) -> None:
        if self.value == 0:
            self.waiters.append(callback)  # both processes busy: it waits for a slot
            return
        self.value -= 1
        callback()

    def release(self) -> None:
        self.value += 1

    # the controller and its pool
    def _process_task(self, request: Any) -> None:
        self.alone.append(request)

    def apply_async(self, _target: Any, args: Sequence[Any], **_: Any) -> None:
        calls = args[0]
        self.jobs.append([call[1] for call in calls])

    # the consumer's timer
    def call_after(self, seconds: float, callback: Any) -> Any:
        timer = Entry(callback)
        self.timers.append(timer)
        return timer


class Entry:
    """A timer entry: firing a cancelled one does nothing, as in kombu's timer."""

    def __init__(self, callback: Any) -> None:
        self.callback = callback
        self.cancelled = False

    def cancel(self) -> None:
        self.cancelled = True

    def fire(self) -> None:
        if not self.cancelled:
            self.callback()


def runnable_request(*, events: int = 1) -> Any:
    request = waiting_request(events=events, left_to_pool=False)
    request.revoked = lambda: False
    request.time_limits = (300, 240)
    request.type, request.body, request.content_type, request.content_encoding = TASK_NAME, b"", "", ""
    return request


def test_a_job_gathers_on_a_free_slot_while_another_process_is_busy(settings: SettingsWrapper) -> None:
    """Gathering only while the whole pool was idle left two in five small messages of a busy
    stream running alone on the second slot (docs/benchmarks.md, "Levers, thirtieth round")."""
    settings.WORKER_GATHER_SECONDS = 60.0
    pool = TwoSlots()
    coalescer = Coalescer(controller=pool, fallback=lambda request: None, timer=pool)
    first, second, third = runnable_request(), runnable_request(), runnable_request(events=3)

    coalescer(first)  # nothing came before it: it goes at once, alone, and keeps one process busy
    coalescer(second)  # close behind it: the free slot holds it open for more
    coalescer(third)  # joins that job

    assert pool.alone == [first]
    assert pool.jobs == []
    assert len(pool.timers) == 1
    pool.timers[0].fire()  # the gather window ends
    assert pool.jobs == [[second.id, third.id]]
    assert pool.alone == [first]
    assert pool.waiters == []


def test_a_lost_connection_drops_the_held_messages_and_their_gather(settings: SettingsWrapper) -> None:
    """Their delivery tags died with the channel (the broker delivers them again): a gather's timer
    that outlived the connection must not run them, nor hold back the messages that come after."""
    settings.WORKER_GATHER_SECONDS = 60.0
    pool = TwoSlots()
    coalescer = Coalescer(controller=pool, fallback=lambda request: None, timer=pool)
    first, second = runnable_request(), runnable_request()
    coalescer(first)
    coalescer(second)  # gathers on the free slot
    assert len(pool.timers) == 1

    coalescer.forget()  # the consumer's on_close; Celery then resets the semaphore too
    pool.value = pool.initial_value
    pool.timers[0].fire()
    assert pool.jobs == []
    assert pool.alone == [first]

    third = runnable_request()
    coalescer(third)  # on the new connection: its own gather, not the old one's
    assert len(pool.timers) == 2
    pool.timers[1].fire()
    assert pool.alone == [first, third]
    assert pool.jobs == []


@pytest.fixture
def worker_app() -> None:
    """Our Celery app as the current one with the batch task in it, as in a worker's pool process."""
    app.set_current()
    assert process_batch.name in app.tasks


def trace_call(kwargs: dict[str, Any], *, retries: int = 0) -> tuple[Any, ...]:
    task_id = str(uuid.uuid4())
    request = {"id": task_id, "task": TASK_NAME, "retries": retries, "delivery_info": {}}
    return (TASK_NAME, task_id, request, ([], kwargs, {}), None, None)


@pytest.mark.django_db(transaction=True)
def test_a_job_runs_each_tenant_s_first_deliveries_together_and_the_rest_alone(
    caplog: pytest.LogCaptureFixture, worker_app: None
) -> None:
    acme = [enriched_event() for _ in range(3)]
    retried = enriched_event()
    globex = enriched_event("globex")
    calls = [trace_call(batch_kwargs("acme", [event])) for event in acme]
    calls.insert(1, trace_call(batch_kwargs("globex", [globex])))
    calls.append(trace_call(batch_kwargs("acme", [retried]), retries=1))

    with caplog.at_level(logging.INFO, logger="events.pipeline"):
        results = run_coalesced(calls, False)

    assert [failed for failed, _, _ in results] == [0] * 5
    assert results[0][1] == repr({"stored": 1, "duplicate": 0, "dead_lettered": 0})  # the tracer's repr
    assert stored_ids() == sorted(e["event_id"] for e in [*acme, retried])
    assert stored_ids("globex") == [globex["event_id"]]
    together = [r.getMessage() for r in caplog.records if "together" in r.getMessage()]
    assert together == ["processed 3 messages of tenant acme together: stored=3 duplicate=0 dead_lettered=0"]


@pytest.mark.django_db(transaction=True)
def test_a_message_of_a_job_that_must_retry_is_retried_alone_and_the_others_succeed(
    settings: SettingsWrapper, worker_app: None
) -> None:
    settings.PIPELINE_STEPS_BEFORE_STORE = (
        "tests.faults.steps.refuse_marked",
        *settings.PIPELINE_STEPS_BEFORE_STORE,
    )
    good, bad = enriched_event(), enriched_event(user_id=REFUSED_MARK)
    calls = [trace_call(batch_kwargs("acme", [good])), trace_call(batch_kwargs("acme", [bad]))]

    results = run_coalesced(calls, False)

    assert results[0][0] == 0, results[0]
    failed, info, _ = results[1]
    raised = getattr(info.exception, "exc", info.exception)  # as the tracer wraps it for the pipe
    assert failed == 1 and isinstance(raised, Retry), results[1]
    assert stored_ids() == [good["event_id"]]
    retry = take_one_message()  # the retry, published for the failing message alone
    assert retry.headers["id"] == calls[1][1] and retry.headers["retries"] == 1
    assert [e["event_id"] for e in retry.payload[1]["events"]] == [bad["event_id"]]


def queue_size() -> int:
    with app.connection_for_write() as connection:
        # Declared as Celery declares it: an empty Redis queue does not exist until then.
        declared: Any = app.amqp.queues[django_settings.QUEUE_NAME](
            connection.default_channel
        ).queue_declare()
    return int(declared.message_count)


def send(events: Sequence[Event]) -> str:
    task_id = str(uuid.uuid4())
    app.send_task(
        TASK_NAME, kwargs=batch_kwargs("acme", events), queue=django_settings.QUEUE_NAME, task_id=task_id
    )
    return task_id


def paused_worker(tmp_path: Path, seconds: float) -> tuple[LiveProcess, Path]:
    """One pool process whose batches wait `seconds` before their steps while the file returned
    exists; the broker lets it hold 16 messages."""
    pausing = tmp_path / "pausing"
    pausing.touch()
    env = child_env(**pause_before_steps_env(seconds, while_file=pausing), CLOUDSCALE_WORKER_PREFETCH="8")
    return start_worker(tmp_path, concurrency=1, env=env), pausing


def send_one_then_the_rest(worker: LiveProcess, events: Sequence[Event]) -> tuple[str, list[str]]:
    """The first event's message, received (its pool process busy with it), then one per event."""
    first = send(events[:1])
    wait_until(lambda: f"[{first}] received" in worker.log(), timeout=60, message="the first message")
    return first, [send([event]) for event in events[1:]]


@pytest.mark.e2e
def test_a_worker_runs_the_messages_waiting_for_its_pool_as_one_job_and_acks_each(
    transactional_db: None, tmp_path: Path
) -> None:
    worker, pausing = paused_worker(tmp_path, 30)
    try:
        events = [enriched_event() for _ in range(5)]
        first, waiting = send_one_then_the_rest(worker, events)
        wait_until(
            lambda: all(f"[{task_id}] received" in worker.log() for task_id in waiting),
            timeout=60,
            message="the others waiting for the pool process",
        )
        pausing.unlink()

        wait_until(
            lambda: stored_ids() == sorted(e["event_id"] for e in events), timeout=90, message="all stored"
        )
        wait_until(
            lambda: all(f"[{t}] succeeded" in worker.log() for t in [first, *waiting]),
            timeout=30,
            message="each message's own success",
        )
        assert "processed 4 messages of tenant acme together" in worker.log()
    finally:
        worker.stop()
    assert queue_size() == 0, "a message left unacked comes back to the queue when its worker stops"


def big_events(count: int) -> list[Event]:
    """Events whose message is big enough that the worker's main process leaves it undecoded."""
    return [enriched_event(properties={"note": "x" * 400}) for _ in range(count)]


@pytest.mark.e2e
def test_full_batches_waiting_for_the_pool_run_together(transactional_db: None, tmp_path: Path) -> None:
    worker, pausing = paused_worker(tmp_path, 30)
    try:
        first = send([enriched_event()])
        wait_until(lambda: f"[{first}] received" in worker.log(), timeout=60, message="the first message")
        published = [big_events(100) for _ in range(3)]
        for events in published:  # as the API publishes them, with their event count in a header
            publish_events(tenant="acme", events=[dict(e) for e in events], correlation_id=str(uuid.uuid4()))
        body = orjson.dumps([[], batch_kwargs("acme", published[0]), {}])
        assert len(body) >= LEFT_TO_POOL_MIN_BYTES, "big enough that a worker may leave them undecoded"
        wait_until(lambda: worker.log().count("] received") == 4, timeout=60, message="all four received")
        pausing.unlink()

        everything = [e for events in published for e in events]
        wait_until(lambda: len(stored_ids()) == 1 + len(everything), timeout=90, message="every event stored")
        wait_until(
            lambda: worker.log().count("] succeeded") == 4, timeout=30, message="each message's success"
        )
        assert "processed 3 messages of tenant acme together" in worker.log()
    finally:
        worker.stop()
    assert queue_size() == 0


@pytest.mark.e2e
@pytest.mark.faults
def test_a_job_whose_pool_process_dies_has_each_message_redelivered_and_run_alone(
    transactional_db: None, tmp_path: Path
) -> None:
    worker, pausing = paused_worker(tmp_path, 3)
    try:
        events = [enriched_event() for _ in range(4)]
        first, waiting = send_one_then_the_rest(worker, events)
        wait_until(
            lambda: f"[{first}] succeeded" in worker.log(), timeout=60, message="the first message done"
        )
        time.sleep(1)  # the job of the other three has begun its pause, before anything is stored
        assert stored_ids() == [events[0]["event_id"]]
        for child in psutil.Process(worker.process.pid).children(recursive=True):
            child.send_signal(signal.SIGKILL)
        pausing.unlink()

        wait_until(
            lambda: stored_ids() == sorted(e["event_id"] for e in events), timeout=90, message="all stored"
        )
        log = worker.log()
        assert "WorkerLostError" in log
        assert "together" not in log, "redelivered messages run alone"
        assert all(log.count(f"[{task_id}] received") == 2 for task_id in waiting)
        assert not DeadLetter.objects.exists()
    finally:
        worker.stop()


@pytest.mark.e2e
@pytest.mark.parametrize(
    ("gather_ms", "prefetch", "later"),
    [
        # A gather of 60 s on a worker the broker lets hold 2 messages (prefetch 1 per process):
        # each message it holds lets one more come, and a full job (16) goes at once.
        ("60000", "1", JOB_MESSAGES_MAX),
        # A gather of 2 s on a worker that may hold 16: the window ends it.
        ("2000", "8", 3),
    ],
)
def test_an_idle_worker_gathers_messages_that_come_close_together(
    transactional_db: None, tmp_path: Path, gather_ms: str, prefetch: str, later: int
) -> None:
    env = child_env(CLOUDSCALE_WORKER_GATHER_MS=gather_ms, CLOUDSCALE_WORKER_PREFETCH=prefetch)
    worker = start_worker(tmp_path, concurrency=2, env=env)
    try:
        events = [enriched_event() for _ in range(1 + later)]
        first = send(events[:1])  # nothing came before it: it goes at once, alone
        wait_until(lambda: f"[{first}] succeeded" in worker.log(), timeout=30, message="the first, alone")
        started = time.monotonic()
        gathered = [send([event]) for event in events[1:]]
        wait_until(
            lambda: all(f"[{task_id}] succeeded" in worker.log() for task_id in gathered),
            timeout=30,
            message="the messages that came close together",
        )
        assert time.monotonic() - started < 20, "the gather ended by its window or a full job"
        assert f"processed {later} messages of tenant acme together" in worker.log()
        assert stored_ids() == sorted(e["event_id"] for e in events)
    finally:
        worker.stop()
