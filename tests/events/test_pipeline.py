"""The worker pipeline, called directly: decode → fraud → scoring → store → actions, retries, dead letters."""

from __future__ import annotations

import json
import signal
import time
import uuid
from collections.abc import Sequence
from datetime import timedelta
from types import FrameType
from typing import Any, cast

import pytest
from celery.exceptions import SoftTimeLimitExceeded
from django.conf import settings as django_settings
from pytest_django.fixtures import Settings as SettingsWrapper

from cloudscale_project.timeutil import isoformat_z, parse_iso, utcnow
from events.deadletters import deadletter_requeue
from events.deliveries import delivery_started
from events.ledger import ledger_record, ledger_report
from events.models import DeadLetter, StoredEvent
from events.pipeline import (
    Pipeline,
    RetryBatch,
    batch_process_message,
    decode_event,
    default_pipeline,
    retry_countdown,
)
from events.stores.base import Event, NewEventsHook, StoreUnavailable
from events.stores.orm import OrmEventStore
from events.tasks import process_batch, purge_expired_events
from tests.events.pipeline_support import (
    FlakyStore,
    batch_kwargs,
    enriched_event,
    platform_counter,
    run_like_the_task,
    take_one_message,
)

pytestmark = [pytest.mark.django_db, pytest.mark.core]


@pytest.fixture(autouse=True)
def _tiny_backoff(settings: SettingsWrapper) -> None:
    settings.RETRY_BACKOFF_BASE_SECONDS = 0.01
    settings.RETRY_BACKOFF_MAX_SECONDS = 0.05


def orm_pipeline(**steps: Any) -> Pipeline:
    return Pipeline(store=steps.pop("store", OrmEventStore()), **steps)


def stored_ids(tenant: str = "acme") -> list[str]:
    return sorted(StoredEvent.objects.filter(tenant=tenant).values_list("event_id", flat=True))


def test_it_stores_a_batch_and_counts_a_redelivered_batch_as_duplicates() -> None:
    events = [enriched_event(event_type="click"), enriched_event(event_type="purchase", properties={})]
    kwargs = batch_kwargs("acme", events)

    first = batch_process_message(args=(), kwargs=kwargs, attempt=1, pipeline=orm_pipeline())
    again = batch_process_message(args=(), kwargs=kwargs, attempt=1, pipeline=orm_pipeline())

    assert sorted(first.stored) == sorted(e["event_id"] for e in events)
    assert again.stored == [] and sorted(again.duplicates) == sorted(e["event_id"] for e in events)
    assert stored_ids() == sorted(e["event_id"] for e in events)
    assert platform_counter("cloudscale_events_processed_total", event_type="click", outcome="stored") == 1
    assert platform_counter("cloudscale_events_processed_total", event_type="click", outcome="duplicate") == 1


def test_it_stores_an_event_repeated_inside_one_message_once() -> None:
    event = enriched_event()
    outcome = batch_process_message(
        args=(), kwargs=batch_kwargs("acme", [event, dict(event)]), attempt=1, pipeline=orm_pipeline()
    )
    assert outcome.stored == [event["event_id"]] and outcome.duplicates == [event["event_id"]]
    assert stored_ids() == [event["event_id"]]


def test_it_runs_the_steps_in_order_with_only_the_good_events() -> None:
    calls: list[tuple[str, list[str]]] = []

    def recorder(name: str) -> Any:
        def step(*, tenant: str, events: Sequence[Event]) -> None:
            calls.append((name, [e["event_id"] for e in events]))

        return step

    class RecordingStore(OrmEventStore):
        def write_many(self, events: Sequence[Event], *, then: NewEventsHook | None = None) -> set[str]:
            calls.append(("store", [e["event_id"] for e in events]))
            return super().write_many(events, then=then)

    good = enriched_event()
    pipeline = Pipeline(
        store=RecordingStore(),
        before_store=(recorder("fraud"), recorder("scoring")),
        after_store=(recorder("actions"),),
    )
    batch_process_message(
        args=(),
        kwargs=batch_kwargs("acme", [good, enriched_event(event_type="teleport")]),
        attempt=1,
        pipeline=pipeline,
    )
    assert calls == [(step, [good["event_id"]]) for step in ("fraud", "scoring", "store", "actions")]


class BegunStep:
    """A step the pipeline begins before the store and finishes after it (as it runs fraud)."""

    def __init__(self, calls: list[str], *, fail_finish: bool = False) -> None:
        self.calls = calls
        self.fail_finish = fail_finish

    def __call__(self, *, tenant: str, events: Sequence[Event]) -> None:
        raise AssertionError("a step with begin() is begun, not called")

    def begin(self, *, tenant: str, events: Sequence[Event]) -> BegunStep:
        self.calls.append("begin")
        return self

    def finish(self) -> None:
        self.calls.append("finish")
        if self.fail_finish:
            raise ConnectionError("the reply never came")

    def abandon(self) -> None:
        self.calls.append("abandon")


def test_a_begun_step_is_finished_after_the_store_write_and_before_the_actions() -> None:
    calls: list[str] = []

    class RecordingStore(OrmEventStore):
        def write_many(self, events: Sequence[Event], *, then: NewEventsHook | None = None) -> set[str]:
            calls.append("store")
            return super().write_many(events, then=then)

    def recorder(name: str) -> Any:
        def step(*, tenant: str, events: Sequence[Event]) -> None:
            calls.append(name)

        return step

    event = enriched_event()
    pipeline = Pipeline(
        store=RecordingStore(),
        before_store=(BegunStep(calls), recorder("scoring")),
        after_store=(recorder("actions"),),
    )
    outcome = batch_process_message(
        args=(), kwargs=batch_kwargs("acme", [event]), attempt=1, pipeline=pipeline
    )

    assert calls == ["begin", "scoring", "store", "finish", "actions"]
    assert outcome.stored == [event["event_id"]]


def test_a_begun_step_is_abandoned_when_the_store_fails_and_run_again_on_the_retry() -> None:
    calls: list[str] = []
    event = enriched_event()
    store = FlakyStore(failures=1)
    outcome, countdowns = run_like_the_task(
        batch_kwargs("acme", [event]), Pipeline(store=store, before_store=(BegunStep(calls),))
    )

    assert calls == ["begin", "abandon", "begin", "finish"]
    assert len(countdowns) == 1 and outcome.stored == [event["event_id"]]


def test_a_begun_step_that_fails_to_finish_leaves_its_events_stored_and_is_retried() -> None:
    """It fails after the store, like an action: counted stored once, never dead-lettered."""
    calls: list[str] = []
    event = enriched_event()
    outcome, countdowns = run_like_the_task(
        batch_kwargs("acme", [event]),
        orm_pipeline(before_store=(BegunStep(calls, fail_finish=True),)),
    )

    assert calls[:4] == ["begin", "finish", "begin", "finish"]
    assert len(countdowns) == django_settings.PROCESS_MAX_ATTEMPTS - 1
    assert stored_ids() == [event["event_id"]] and not DeadLetter.objects.exists()
    assert outcome.dead_lettered == 0


@pytest.mark.parametrize(
    ("poison", "reason", "error"),
    [
        ("not an object", "DeserializationFailed", "event is a str, not an object"),
        ({"event_id": "x1", "user_id": "u"}, "MissingEventType", "event_type is missing"),
        (enriched_event(event_type=""), "MissingEventType", "event_type is missing"),
        (enriched_event(event_type="teleport"), "UnknownEventType", "unknown event_type 'teleport'"),
        (enriched_event(event_type=7), "UnknownEventType", "unknown event_type 7"),
        (enriched_event(user_id=None), "DeserializationFailed", "user_id is missing"),
        (enriched_event(event_id=""), "DeserializationFailed", "event_id is missing"),
        (enriched_event(received_at=None), "DeserializationFailed", "received_at is missing"),
        (enriched_event(timestamp="yesterday"), "DeserializationFailed", "timestamp is not an ISO 8601 time"),
        (enriched_event(event_id="x" * 65), "DeserializationFailed", "event_id is longer than 64"),
        (enriched_event(properties=[1]), "DeserializationFailed", "properties must be an object"),
        (
            enriched_event(tenant="globex"),
            "DeserializationFailed",
            "event tenant does not match the message tenant",
        ),
    ],
)
def test_it_dead_letters_a_bad_event_and_stores_the_rest_of_its_batch(
    poison: Any, reason: str, error: str
) -> None:
    good = [enriched_event(), enriched_event()]
    outcome = batch_process_message(
        args=(),
        kwargs=batch_kwargs("acme", [good[0], poison, good[1]], correlation_id="c-1"),
        attempt=1,
        pipeline=orm_pipeline(),
    )
    assert sorted(outcome.stored) == sorted(e["event_id"] for e in good)
    assert outcome.dead_lettered == 1
    letter = DeadLetter.objects.get()
    assert (letter.reason, letter.error, letter.tenant, letter.status) == (reason, error, "acme", "pending")
    assert letter.kind == "event" and letter.attempts == 1
    own_id = poison.get("correlation_id") if isinstance(poison, dict) else None
    assert letter.correlation_id == (own_id or "c-1")
    assert platform_counter("cloudscale_dead_letters_total", reason=reason) == 1


def test_it_keeps_the_dead_letter_payload_as_received() -> None:
    poison = {"event_type": "teleport", "user_id": "ü-1", "z": 1, "a": [1.5, None]}
    batch_process_message(args=(), kwargs=batch_kwargs("acme", [poison]), attempt=1, pipeline=orm_pipeline())
    assert bytes(DeadLetter.objects.get().payload) == (
        '{"event_type":"teleport","user_id":"ü-1","z":1,"a":[1.5,null]}'.encode()
    )


def test_it_keeps_one_dead_letter_row_when_a_poison_message_is_delivered_again() -> None:
    kwargs = batch_kwargs("acme", [enriched_event(event_type="teleport", event_id="e-77")])
    for _ in range(3):
        batch_process_message(args=(), kwargs=kwargs, attempt=1, pipeline=orm_pipeline())
    letter = DeadLetter.objects.get()
    assert letter.attempts == 3 and letter.event_id == "e-77"
    assert letter.last_seen > letter.first_seen
    assert platform_counter("cloudscale_dead_letters_total", reason="UnknownEventType") == 1


@pytest.mark.parametrize(
    ("args", "kwargs", "error"),
    [
        (("acme",), {}, "process_batch takes keyword arguments only"),
        ((), {"events": []}, "tenant must be a non-empty string"),
        ((), {"tenant": "acme", "events": {"a": 1}}, "events must be a list"),
        ((), {"tenant": "acme", "events": [], "shard": 3}, "unexpected arguments: shard"),
    ],
)
def test_it_dead_letters_a_message_whose_arguments_are_unusable(
    args: tuple[Any, ...], kwargs: dict[str, Any], error: str
) -> None:
    batch_process_message(args=args, kwargs=kwargs, attempt=1, pipeline=orm_pipeline())
    letter = DeadLetter.objects.get()
    assert (letter.reason, letter.kind, letter.error) == ("DeserializationFailed", "batch", error)


def test_it_retries_a_store_that_fails_twice_and_then_stores_each_event_once() -> None:
    events = [enriched_event(), enriched_event()]
    store = FlakyStore(failures=2, retry_after=0.2)

    outcome, countdowns = run_like_the_task(batch_kwargs("acme", events), orm_pipeline(store=store))

    assert store.write_calls == 3
    assert len(countdowns) == 2 and all(c >= 0.2 for c in countdowns), "Retry-After is a floor"
    assert sorted(outcome.stored) == stored_ids() == sorted(e["event_id"] for e in events)
    assert DeadLetter.objects.count() == 0
    assert (
        platform_counter("cloudscale_events_processed_total", event_type="page_view", outcome="retried") == 4
    )


def test_it_gives_up_after_five_attempts_and_a_requeue_stores_the_events_once_the_store_is_back(
    settings: SettingsWrapper,
) -> None:
    events = [enriched_event(), enriched_event(event_type="search", properties={"query": "socks"})]
    store = FlakyStore(failures=None)

    outcome, countdowns = run_like_the_task(batch_kwargs("acme", events), orm_pipeline(store=store))

    assert settings.PROCESS_MAX_ATTEMPTS == 5
    assert store.write_calls == 5 and len(countdowns) == 4
    assert outcome.dead_lettered == 2 and stored_ids() == []
    letters = list(DeadLetter.objects.order_by("id"))
    assert {(d.reason, d.attempts, d.status) for d in letters} == {("MaxRetriesExceeded", 5, "pending")}
    assert sorted(d.event_id or "" for d in letters) == sorted(e["event_id"] for e in events)
    assert "StoreUnavailable: 429 throttled by the store" in letters[0].error

    # The store recovers; requeue publishes each event again as its own process_batch message.
    result = deadletter_requeue(ids=[d.pk for d in letters])
    assert result.requeued == [d.pk for d in letters]
    for _ in letters:
        message = take_one_message()
        assert message.headers["task"] == "events.process_batch"
        args, kwargs, _embed = message.payload
        process_batch(*args, **kwargs)  # the real task body, with the real (healthy) store
    assert stored_ids() == sorted(e["event_id"] for e in events)
    assert set(DeadLetter.objects.values_list("status", flat=True)) == {"requeued"}


def test_it_dead_letters_a_batch_whose_worker_was_lost_three_times_and_a_requeue_stores_it(
    settings: SettingsWrapper,
) -> None:
    events = [enriched_event() for _ in range(3)]
    task_id = str(uuid.uuid4())
    # Three deliveries of this message started and never finished (each killed its pool process);
    # the first got as far as storing one event. That is what they leave behind:
    for _ in range(3):
        delivery_started(task_id=task_id, retries=0)
    OrmEventStore().write_many(events[:1])

    result = process_batch.apply(kwargs=batch_kwargs("acme", events), task_id=task_id)

    assert settings.WORKER_LOSSES_MAX == 3
    assert result.get() == {"stored": 0, "duplicate": 1, "dead_lettered": 2}
    assert stored_ids() == [events[0]["event_id"]], "the batch was not run a fourth time"
    letters = list(DeadLetter.objects.order_by("id"))
    assert {(d.reason, d.kind, d.attempts, d.status) for d in letters} == {
        ("MaxRetriesExceeded", "event", 3, "pending")
    }
    assert sorted(d.event_id or "" for d in letters) == sorted(e["event_id"] for e in events[1:])
    assert letters[0].error.startswith("WorkerLost: the worker processing this batch was lost 3 times")
    by_id = {e["event_id"]: e for e in events}
    assert all(json.loads(bytes(d.payload)) == by_id[d.event_id or ""] for d in letters)
    # The count went with the message: a new delivery of a new message starts from zero.
    assert delivery_started(task_id=task_id, retries=0) == 1

    assert deadletter_requeue(ids=[d.pk for d in letters]).requeued == [d.pk for d in letters]
    for _ in letters:
        message = take_one_message()
        args, kwargs, _embed = message.payload
        process_batch(*args, **kwargs)
    assert stored_ids() == sorted(e["event_id"] for e in events)


def test_it_runs_a_batch_normally_while_its_worker_losses_are_below_the_limit() -> None:
    events = [enriched_event()]
    task_id = str(uuid.uuid4())
    for _ in range(2):
        delivery_started(task_id=task_id, retries=0)
    result = process_batch.apply(kwargs=batch_kwargs("acme", events), task_id=task_id)
    assert result.get() == {"stored": 1, "duplicate": 0, "dead_lettered": 0}
    assert not DeadLetter.objects.exists()
    assert delivery_started(task_id=task_id, retries=0) == 1, "a finished delivery clears its count"


def test_it_dead_letters_only_the_event_that_breaks_a_step_on_the_last_attempt() -> None:
    def fussy_scoring(*, tenant: str, events: Sequence[Event]) -> None:
        if any(e["user_id"] == "u-bad" for e in events):
            raise ValueError("cannot score u-bad")

    good, bad = enriched_event(), enriched_event(user_id="u-bad")
    outcome, countdowns = run_like_the_task(
        batch_kwargs("acme", [good, bad]), orm_pipeline(before_store=(fussy_scoring,))
    )
    assert len(countdowns) == 4
    assert outcome.stored == [good["event_id"]] and outcome.dead_lettered == 1
    letter = DeadLetter.objects.get()
    assert (letter.reason, letter.event_id) == ("MaxRetriesExceeded", bad["event_id"])
    assert letter.error == "ValueError: cannot score u-bad"


def test_it_dead_letters_the_untried_events_when_the_soft_time_limit_strikes_in_the_last_split() -> None:
    # The last attempt failed as a whole, so its events are tried one at a time, 0.2 s each.
    # Celery's soft time limit is an exception raised asynchronously in the pool process (by a
    # signal handler); SIGALRM plays that part here, 0.5 s into the split.
    tried: list[str] = []

    def slow_fussy_scoring(*, tenant: str, events: Sequence[Event]) -> None:
        if len(events) > 1:
            raise ValueError("cannot score a batch")
        tried.append(events[0]["event_id"])
        time.sleep(0.2)

    def soft_time_limit(signum: int, frame: FrameType | None) -> None:
        raise SoftTimeLimitExceeded("soft time limit (120s) exceeded")

    events = [enriched_event() for _ in range(10)]
    previous = signal.signal(signal.SIGALRM, soft_time_limit)
    signal.setitimer(signal.ITIMER_REAL, 0.5)
    try:
        started = time.monotonic()
        outcome = batch_process_message(
            args=(),
            kwargs=batch_kwargs("acme", events),
            attempt=django_settings.PROCESS_MAX_ATTEMPTS,
            pipeline=orm_pipeline(before_store=(slow_fussy_scoring,)),
        )
        elapsed = time.monotonic() - started
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)
        signal.signal(signal.SIGALRM, previous)

    # It stopped at the limit instead of running on into the hard limit (which would kill the
    # process and bring the same last attempt back forever).
    assert len(tried) <= 4 and elapsed < 1.5, f"tried {len(tried)} events in {elapsed:.1f}s"
    letters = DeadLetter.objects.all()
    assert {letter.reason for letter in letters} == {"MaxRetriesExceeded"}
    assert all("SoftTimeLimitExceeded" in letter.error for letter in letters)
    assert len(letters) == outcome.dead_lettered == 10 - len(stored_ids())
    assert {letter.event_id for letter in letters} | set(stored_ids()) == {e["event_id"] for e in events}


def test_it_sends_only_the_good_events_into_a_retry() -> None:
    good = enriched_event()
    with pytest.raises(RetryBatch) as retry:
        batch_process_message(
            args=(),
            kwargs=batch_kwargs("acme", [good, enriched_event(event_type="teleport")]),
            attempt=1,
            pipeline=orm_pipeline(store=FlakyStore(failures=1)),
        )
    assert [e["event_id"] for e in retry.value.events] == [good["event_id"]]
    assert DeadLetter.objects.filter(reason="UnknownEventType").count() == 1


def test_the_celery_task_stores_a_batch_with_the_default_pipeline() -> None:
    events = [enriched_event(), enriched_event(event_type="login", properties={})]
    result = process_batch.apply(kwargs=batch_kwargs("acme", events))
    assert result.get() == {"stored": 2, "duplicate": 0, "dead_lettered": 0}
    assert stored_ids() == sorted(e["event_id"] for e in events)
    assert isinstance(default_pipeline().store, OrmEventStore)


def test_it_fills_in_the_message_tenant_on_an_event_without_one() -> None:
    event = cast(dict[str, Any], enriched_event())  # no tenant on purpose: no longer an Event
    del event["tenant"]
    assert decode_event(event, tenant="acme")["tenant"] == "acme"


@pytest.mark.parametrize(
    ("attempt", "rng", "retry_after", "expected"),
    [
        (1, 0.0, None, 0.5),  # half of the first step (base 1 s)...
        (1, 1.0, None, 1.0),  # ...up to all of it
        (3, 0.0, None, 2.0),  # the step doubles per attempt: 4 s
        (4, 1.0, None, 8.0),
        (10, 1.0, None, 60.0),  # capped
        (1, 0.0, 30.0, 30.0),  # a store's Retry-After is a floor
        (1, 0.0, 900.0, 150.0),  # but never beyond the ceiling (half the visibility timeout)
    ],
)
def test_retry_countdown_is_exponential_with_jitter_and_honours_retry_after(
    attempt: int, rng: float, retry_after: float | None, expected: float
) -> None:
    countdown = retry_countdown(
        attempt=attempt, base=1.0, cap=60.0, retry_after=retry_after, ceiling=150.0, rng=lambda: rng
    )
    assert countdown == pytest.approx(expected)


def test_the_retention_task_purges_events_older_than_the_retention_period(settings: SettingsWrapper) -> None:
    old = enriched_event(received_at=isoformat_z(utcnow() - timedelta(days=31)))
    fresh = enriched_event()
    OrmEventStore().write_many([old, fresh])

    assert purge_expired_events() == 1

    assert stored_ids() == [fresh["event_id"]]
    entry = settings.CELERY_BEAT_SCHEDULE["events.purge-expired-events"]
    assert entry["task"] == purge_expired_events.name == "events.purge_expired_events"


def test_a_store_that_gives_up_part_way_gets_its_stored_events_counted_once_and_not_dead_lettered() -> None:
    class PartialWrite(StoreUnavailable):
        def __init__(self, *, stored_ids: set[str], existing_ids: set[str]) -> None:
            super().__init__("gave up part-way", retry_after=None)
            self.stored_ids, self.existing_ids = stored_ids, existing_ids

    class HalfWritingStore(OrmEventStore):
        """Stores the first event of every call, then gives up (like Cosmos's PartialWrite)."""

        def write_many(self, events: Sequence[Event], *, then: NewEventsHook | None = None) -> set[str]:
            new = super().write_many(events[:1], then=then)
            raise PartialWrite(stored_ids=new, existing_ids={events[0]["event_id"]} - new)

    first, second = enriched_event(), enriched_event()
    outcome, countdowns = run_like_the_task(
        batch_kwargs("acme", [first, second]), orm_pipeline(store=HalfWritingStore())
    )

    assert len(countdowns) == 4
    assert stored_ids() == [first["event_id"]]
    assert DeadLetter.objects.get().event_id == second["event_id"]
    assert outcome.dead_lettered == 1 and outcome.duplicates == [first["event_id"]]
    assert (
        platform_counter("cloudscale_events_processed_total", event_type="page_view", outcome="stored") == 1
    )


def balanced_ledger(events: Sequence[Event]) -> dict[str, int]:
    """The ledger's totals once the API has counted `events` as accepted (docs/api.md, "Loss ledger")."""
    received_at = parse_iso(events[0]["received_at"])
    ledger_record(tenant="acme", received_at=received_at, counts={"accepted": len(events)})
    report = ledger_report(
        tenant="acme", since=received_at - timedelta(hours=1), until=received_at + timedelta(hours=1)
    )
    return cast(dict[str, int], report["totals"])


def failing_for(*bad_ids: str) -> Any:
    """An after-store step that fails whenever its batch holds one of `bad_ids`; records the rest."""
    done: list[str] = []

    def actions(*, tenant: str, events: Sequence[Event]) -> None:
        ids = [e["event_id"] for e in events]
        if set(ids) & set(bad_ids):
            raise RuntimeError("scheduled actions failed")
        done.extend(ids)

    actions.done = done  # type: ignore[attr-defined]
    return actions


def test_an_event_stored_before_a_later_step_failed_is_counted_stored_and_never_dead_lettered() -> None:
    """Dead-lettering it too would count it twice in the ledger: pending would go negative."""
    event = enriched_event()
    actions = failing_for(event["event_id"])
    outcome, countdowns = run_like_the_task(
        batch_kwargs("acme", [event]), orm_pipeline(after_store=(actions,))
    )

    assert len(countdowns) == django_settings.PROCESS_MAX_ATTEMPTS - 1  # the later step was retried
    assert stored_ids() == [event["event_id"]] and not DeadLetter.objects.exists()
    assert outcome.dead_lettered == 0
    assert (
        platform_counter("cloudscale_events_processed_total", event_type="page_view", outcome="stored") == 1
    )
    totals = balanced_ledger([event])
    assert (totals["accepted"], totals["stored"], totals["dead_lettered"], totals["pending"]) == (1, 1, 0, 0)


def test_one_event_whose_later_step_fails_does_not_take_the_others_actions_with_it() -> None:
    good, bad, other = enriched_event(), enriched_event(), enriched_event()
    actions = failing_for(bad["event_id"])
    run_like_the_task(batch_kwargs("acme", [good, bad, other]), orm_pipeline(after_store=(actions,)))

    assert stored_ids() == sorted(e["event_id"] for e in (good, bad, other))
    assert sorted(actions.done) == sorted([good["event_id"], other["event_id"]])
    assert not DeadLetter.objects.exists()
    assert balanced_ledger([good, bad, other])["pending"] == 0


def test_the_last_attempt_s_split_counts_an_event_stored_before_its_later_step_failed() -> None:
    """A step before the store fails the batch (one bad event); tried alone, the bad event is a
    dead letter and an event whose scheduled actions fail alone is stored, not dead-lettered too."""
    good, bad, unlucky = enriched_event(), enriched_event(), enriched_event()

    def fraud(*, tenant: str, events: Sequence[Event]) -> None:
        if any(e["event_id"] == bad["event_id"] for e in events):
            raise ValueError("a rule cannot judge this event")

    outcome, _ = run_like_the_task(
        batch_kwargs("acme", [good, bad, unlucky]),
        orm_pipeline(before_store=(fraud,), after_store=(failing_for(unlucky["event_id"]),)),
    )

    assert stored_ids() == sorted([good["event_id"], unlucky["event_id"]])
    assert DeadLetter.objects.get().event_id == bad["event_id"]
    assert sorted(outcome.stored) == sorted([good["event_id"], unlucky["event_id"]])
    totals = balanced_ledger([good, bad, unlucky])
    assert (totals["stored"], totals["dead_lettered"], totals["pending"]) == (2, 1, 0)


def test_it_stores_a_name_outside_the_catalog_only_when_the_api_marked_it_custom() -> None:
    marked = enriched_event(event_type="Level Finished", custom=True, context={"library": {"name": "x"}})
    unmarked = enriched_event(event_type="Level Finished")
    outcome = batch_process_message(args=(), kwargs=batch_kwargs("acme", [marked, unmarked]), attempt=1)

    assert outcome.stored == [marked["event_id"]] and outcome.dead_lettered == 1
    row = StoredEvent.objects.get(event_id=marked["event_id"])
    assert (row.event_type, row.custom, row.context) == ("Level Finished", True, {"library": {"name": "x"}})
    assert DeadLetter.objects.get().reason == "UnknownEventType"
