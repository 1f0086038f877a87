"""The worker pipeline: one `events.process_batch` message = one batch, processed in order

    decode by type → fraud → scoring → event-store write → scheduled actions → (ack by Celery)

Fraud is begun in its place and finished after the store write (`PendingStep`): its Redis script
runs while the worker writes the batch to the database, and its alerts are written after it. On
the ORM store, scoring runs inside the store write's transaction on the events it newly stored
(`StoredStep`), so the stored row is its record of which events it applied.

Plain functions over plain dicts. The task in `events/tasks.py` only translates between Celery and
`batch_process_message`; tests call these functions directly with their own store.

Delivery is at least once, so every effect is idempotent per (tenant, event_id): the store writes an
event once, the steps are required to be idempotent per event, dead letters are unique per payload.
A bad event is dead-lettered on its own and never holds back the rest of its batch; a failure of the
batch as a whole (store down, a step raising) is retried with exponential backoff and jitter, and
after `PROCESS_MAX_ATTEMPTS` attempts the events that still fail become `MaxRetriesExceeded` dead
letters.
"""

from __future__ import annotations

import logging
import random
from collections import Counter
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from functools import cache
from typing import Any, Protocol, cast

import redis
from celery.exceptions import SoftTimeLimitExceeded
from django.conf import settings
from django.db import InterfaceError, OperationalError
from django.utils.module_loading import import_string
from kombu.exceptions import OperationalError as BrokerOperationalError

from cloudscale_project.correlation import set_correlation_id
from cloudscale_project.metrics import platform_incr_many
from cloudscale_project.observability import ATTR_TENANT, start_span
from cloudscale_project.timeutil import parse_iso
from events.deadletters import DeadLetterInput, deadletter_record_many, event_payload, json_payload
from events.models import DeadLetter
from events.schemas import EVENT_TYPES as CATALOG
from events.schemas import is_custom_event_type, metric_event_type
from events.shape import TIME_FIELDS, checked_strings
from events.stores import EventStore, StoreUnavailable, get_event_store
from events.stores.base import Event, StoreWithSteps

logger = logging.getLogger(__name__)

Reason = DeadLetter.Reason

# The catalog is the API's (docs/api.md, "Events"): a type the API would refuse is unknown here too.
EVENT_TYPES: frozenset[str] = frozenset(CATALOG)

# (field, required, max length) of the string fields a worker checks (events/shape.py): an
# over-long value must be a dead letter here, not a database error that fails the whole batch on
# PostgreSQL.
_STRING_FIELDS = checked_strings()
_TIME_FIELDS = TIME_FIELDS

# Transient failures: the batch is retried as a whole. Anything else raised by a step is a bug or a
# bad event; it is retried too (cheap and safe: every effect is idempotent), but on the last attempt
# the batch is split so only the events that still fail are dead-lettered.
TRANSIENT_ERRORS: tuple[type[BaseException], ...] = (
    StoreUnavailable,
    OperationalError,
    InterfaceError,
    redis.ConnectionError,
    redis.TimeoutError,
    BrokerOperationalError,
    SoftTimeLimitExceeded,
)

OUTCOME_STORED = "stored"
OUTCOME_DUPLICATE = "duplicate"
OUTCOME_DEAD_LETTERED = "dead_lettered"
OUTCOME_RETRIED = "retried"
_PROCESSED_METRIC = "cloudscale_events_processed_total"


class BatchStep(Protocol):
    """One pipeline step over a tenant's batch; must be idempotent per (tenant, event_id).

    A step before the store may also have `begin(tenant=, events=)`, returning a `PendingStep`:
    the pipeline then starts it, runs the next steps and the store write while it waits on another
    service, and finishes it after the store (fraud's Redis script runs beside the database write).
    """

    def __call__(self, *, tenant: str, events: Sequence[Event]) -> None: ...


class StoredStep(BatchStep, Protocol):
    """A step that can also run inside the store's transaction (`apply_stored`), on the events
    that transaction newly stored: then it needs no record of its own of which events it applied,
    since the stored row is that record and commits with its effect."""

    def apply_stored(self, *, tenant: str, events: Sequence[Event]) -> None: ...


class PendingStep(Protocol):
    """A begun step: `finish` waits for it and completes it; `abandon` drops it (its batch will be
    retried, and the step is idempotent)."""

    def finish(self) -> object: ...

    def abandon(self) -> None: ...


@dataclass(frozen=True)
class Pipeline:
    store: EventStore
    before_store: tuple[BatchStep, ...] = ()
    after_store: tuple[BatchStep, ...] = ()


def default_pipeline() -> Pipeline:
    """The pipeline of settings: the steps are dotted paths, so events imports none of their apps."""
    return Pipeline(
        store=get_event_store(),
        before_store=_load_steps(settings.PIPELINE_STEPS_BEFORE_STORE),
        after_store=_load_steps(settings.PIPELINE_STEPS_AFTER_STORE),
    )


@cache
def _load_steps(paths: Sequence[str]) -> tuple[BatchStep, ...]:
    return tuple(import_string(path) for path in paths)


# --- decoding --------------------------------------------------------------------------------------


class EventRejected(Exception):
    def __init__(self, reason: str, error: str) -> None:
        super().__init__(error)
        self.reason = reason
        self.error = error


class MessageRejected(Exception):
    """The message itself (not one of its events) is unusable: no tenant, events not a list, ..."""


@dataclass(frozen=True)
class BatchMessage:
    tenant: str
    events: list[Any]
    correlation_id: str

    def as_kwargs(self, events: Sequence[Any] | None = None) -> dict[str, Any]:
        return {
            "tenant": self.tenant,
            "events": list(self.events if events is None else events),
            "correlation_id": self.correlation_id,
        }


def parse_message(*, args: Sequence[Any], kwargs: Mapping[str, Any]) -> BatchMessage:
    """The keyword interface of `events.process_batch`: tenant, events, correlation_id."""
    if args:
        raise MessageRejected("process_batch takes keyword arguments only")
    unexpected = sorted(set(kwargs) - {"tenant", "events", "correlation_id"})
    if unexpected:
        raise MessageRejected(f"unexpected arguments: {', '.join(unexpected)}")
    tenant = kwargs.get("tenant")
    if not isinstance(tenant, str) or not tenant:
        raise MessageRejected("tenant must be a non-empty string")
    events = kwargs.get("events")
    if not isinstance(events, list):
        raise MessageRejected("events must be a list")
    correlation_id = kwargs.get("correlation_id") or ""
    if not isinstance(correlation_id, str):
        raise MessageRejected("correlation_id must be a string")
    return BatchMessage(tenant=tenant, events=events, correlation_id=correlation_id)


def decode_event(raw: Any, *, tenant: str) -> Event:
    """Check one enriched event; the reason of a rejection is the dead letter's reason."""
    if not isinstance(raw, dict):
        raise EventRejected(Reason.DESERIALIZATION_FAILED, f"event is a {type(raw).__name__}, not an object")
    event_type = raw.get("event_type")
    if event_type is None or event_type == "":
        raise EventRejected(Reason.MISSING_EVENT_TYPE, "event_type is missing")
    # A custom event (SDK-compatible endpoints) is marked by the API at enrichment: a type outside
    # the catalog without that mark is still a bad type.
    custom = raw.get("custom") is True
    if not isinstance(event_type, str) or not (
        event_type in EVENT_TYPES or (custom and is_custom_event_type(event_type))
    ):
        raise EventRejected(Reason.UNKNOWN_EVENT_TYPE, f"unknown event_type {event_type!r}")
    _check_fields(raw)
    event_tenant = raw.get("tenant")
    if event_tenant is not None and event_tenant != tenant:
        # Tenant isolation: the message's tenant (set by the API from the key) is the authority.
        raise EventRejected(Reason.DESERIALIZATION_FAILED, "event tenant does not match the message tenant")
    return cast(Event, {**raw, "tenant": tenant})  # every field checked above


def _check_fields(raw: dict[str, Any]) -> None:
    for name, required, max_length in _STRING_FIELDS:
        value = raw.get(name)
        if value is None or value == "":
            if required:
                raise EventRejected(Reason.DESERIALIZATION_FAILED, f"{name} is missing")
            continue
        if not isinstance(value, str):
            raise EventRejected(Reason.DESERIALIZATION_FAILED, f"{name} must be a string")
        if len(value) > max_length:
            raise EventRejected(Reason.DESERIALIZATION_FAILED, f"{name} is longer than {max_length}")
    for name in _TIME_FIELDS:
        try:
            parse_iso(raw[name])
        except ValueError:
            raise EventRejected(Reason.DESERIALIZATION_FAILED, f"{name} is not an ISO 8601 time") from None
    properties = raw.get("properties")
    if properties is not None and not isinstance(properties, dict):
        raise EventRejected(Reason.DESERIALIZATION_FAILED, "properties must be an object")
    context = raw.get("context")
    if context is not None and not isinstance(context, dict):
        raise EventRejected(Reason.DESERIALIZATION_FAILED, "context must be an object")


@dataclass
class DecodedBatch:
    events: list[Event] = field(default_factory=list)
    rejected: list[tuple[Any, EventRejected]] = field(default_factory=list)
    repeated: list[Event] = field(default_factory=list)  # same event_id twice in one message


def decode_batch(*, tenant: str, events: Sequence[Any]) -> DecodedBatch:
    decoded = DecodedBatch()
    seen: set[str] = set()
    for raw in events:
        try:
            event = decode_event(raw, tenant=tenant)
        except EventRejected as exc:
            decoded.rejected.append((raw, exc))
            continue
        if event["event_id"] in seen:
            decoded.repeated.append(event)
            continue
        seen.add(event["event_id"])
        decoded.events.append(event)
    return decoded


# --- retries -----------------------------------------------------------------------------------------


def retry_countdown(
    *,
    attempt: int,
    base: float,
    cap: float,
    retry_after: float | None = None,
    ceiling: float | None = None,
    rng: Callable[[], float] = random.random,
) -> float:
    """Seconds to wait after failed attempt `attempt` (1-based).

    Exponential (base * 2^(attempt-1), at most `cap`) with "equal jitter": between half and all of
    the step, so workers that failed together spread out but the wait still grows. A store's
    Retry-After is a floor. `ceiling` bounds everything: on Redis a message waiting for its ETA is
    held unacked, and one held past the visibility timeout is delivered a second time.
    """
    step = min(cap, base * 2 ** (attempt - 1))
    delay = step / 2 + rng() * step / 2
    if retry_after is not None:
        delay = max(delay, retry_after)
    if ceiling is not None:
        delay = min(delay, ceiling)
    return delay


def countdown_for(*, attempt: int, error: BaseException | None = None) -> float:
    retry_after = error.retry_after if isinstance(error, StoreUnavailable) else None
    return retry_countdown(
        attempt=attempt,
        base=settings.RETRY_BACKOFF_BASE_SECONDS,
        cap=settings.RETRY_BACKOFF_MAX_SECONDS,
        retry_after=retry_after,
        ceiling=settings.VISIBILITY_TIMEOUT_SECONDS / 2,
    )


class RetryBatch(Exception):
    """Attempt `attempt` failed transiently: send `events` (the good ones) again after `countdown`."""

    def __init__(self, *, message: BatchMessage, events: list[Event], countdown: float, cause: str) -> None:
        super().__init__(cause)
        self.message = message
        self.events = events
        self.countdown = countdown


# --- processing ---------------------------------------------------------------------------------------


@dataclass
class BatchOutcome:
    tenant: str
    correlation_id: str
    stored: list[str] = field(default_factory=list)
    duplicates: list[str] = field(default_factory=list)
    dead_lettered: int = 0

    def counts(self) -> dict[str, int]:
        return {
            OUTCOME_STORED: len(self.stored),
            OUTCOME_DUPLICATE: len(self.duplicates),
            OUTCOME_DEAD_LETTERED: self.dead_lettered,
        }


class StoredThenFailed(Exception):
    """The store wrote every event of the run, then a step after it failed.

    The events are stored, so they must never also become dead letters: the ledger would count
    them twice (stored and dead-lettered) and show a negative `pending`. Like a store's partial
    write, the pipeline counts them as stored and retries the steps after the store; `__cause__`
    is the step's error.
    """

    def __init__(self, *, stored_ids: set[str], existing_ids: set[str], cause: BaseException) -> None:
        super().__init__(f"stored, then a step after the store failed: {_describe(cause)}")
        self.stored_ids = stored_ids
        self.existing_ids = existing_ids


def _run_steps(*, pipeline: Pipeline, tenant: str, events: list[Event]) -> set[str]:
    """decode is done; fraud → scoring → store → actions. Returns the ids newly stored.

    A step with `apply_stored` (scoring) runs inside the store's transaction instead, on the
    events that transaction newly stored, when the store offers it (`StoreWithSteps`).
    """
    if not events:
        return set()
    in_store = _steps_in_store_transaction(pipeline)
    begun: list[PendingStep] = []
    try:
        for step in pipeline.before_store:
            if step in in_store:
                continue
            begin = getattr(step, "begin", None)
            if begin is None:
                step(tenant=tenant, events=events)
            else:
                begun.append(begin(tenant=tenant, events=events))
        with start_span("event_store.write_many", {ATTR_TENANT: tenant, "cloudscale.events": len(events)}):
            new_ids = _store_write(pipeline.store, tenant=tenant, events=events, steps=in_store)
    except BaseException:
        for pending in begun:
            pending.abandon()
        raise
    # Actions get every event, not only new ones: a redelivery after a crash between the store
    # write and the actions must still schedule them (the step is idempotent per event). A begun
    # step that fails now fails after the store, like an action: the events count as stored.
    try:
        _finish(begun)
        _after_store(pipeline=pipeline, tenant=tenant, events=events)
    except Exception as exc:
        existing = {event["event_id"] for event in events} - new_ids
        raise StoredThenFailed(stored_ids=new_ids, existing_ids=existing, cause=exc) from exc
    return new_ids


def _steps_in_store_transaction(pipeline: Pipeline) -> tuple[StoredStep, ...]:
    """The before-store steps to run inside the store's transaction: those that can (a step with
    `apply_stored`), when the store can (`runs_steps_in_transaction`)."""
    if not getattr(pipeline.store, "runs_steps_in_transaction", False):
        return ()
    return tuple(cast(StoredStep, step) for step in pipeline.before_store if hasattr(step, "apply_stored"))


def _store_write(
    store: EventStore, *, tenant: str, events: list[Event], steps: tuple[StoredStep, ...]
) -> set[str]:
    if not steps:
        return store.write_many(events)

    def apply_stored(new_events: list[Event]) -> None:
        for step in steps:
            step.apply_stored(tenant=tenant, events=new_events)

    return cast(StoreWithSteps, store).write_many(events, then=apply_stored)


def _finish(begun: list[PendingStep]) -> None:
    for index, pending in enumerate(begun):
        try:
            pending.finish()
        except BaseException:
            for rest in begun[index + 1 :]:
                rest.abandon()
            raise


def _rejection_letters(
    message: BatchMessage, rejected: list[tuple[Any, EventRejected]]
) -> list[DeadLetterInput]:
    return [
        DeadLetterInput(
            reason=exc.reason,
            kind=DeadLetter.Kind.EVENT,
            tenant=message.tenant,
            payload=event_payload(raw),
            error=exc.error,
            correlation_id=_correlation_of(raw, message),
            event_id=_event_id_of(raw),
            received_at=_received_at_of(raw),
        )
        for raw, exc in rejected
    ]


def _exhausted_letters(
    message: BatchMessage, events: Sequence[Event], *, attempts: int, error: str
) -> list[DeadLetterInput]:
    return [
        DeadLetterInput(
            reason=Reason.MAX_RETRIES_EXCEEDED,
            kind=DeadLetter.Kind.EVENT,
            tenant=message.tenant,
            payload=event_payload(event),
            error=error,
            attempts=attempts,
            correlation_id=_correlation_of(event, message),
            event_id=_event_id_of(event),
            received_at=_received_at_of(event),
        )
        for event in events
    ]


def _correlation_of(raw: Any, message: BatchMessage) -> str:
    value = raw.get("correlation_id") if isinstance(raw, dict) else None
    return (value if isinstance(value, str) and value else message.correlation_id)[:64]


def _event_id_of(raw: Any) -> str | None:
    value = raw.get("event_id") if isinstance(raw, dict) else None
    return value[:128] if isinstance(value, str) and value else None


def _received_at_of(raw: Any) -> datetime | None:
    value = raw.get("received_at") if isinstance(raw, dict) else None
    if not isinstance(value, str):
        return None
    try:
        return parse_iso(value)
    except ValueError:
        return None


def _describe(exc: BaseException) -> str:
    return f"{type(exc).__name__}: {exc}"[:2000]


def _count(outcome: str, events: Sequence[Any]) -> list[tuple[dict[str, str], int]]:
    types = Counter(metric_event_type(e) for e in events)
    return [({"event_type": t, "outcome": outcome}, n) for t, n in types.items()]


def batch_process(*, message: BatchMessage, attempt: int, pipeline: Pipeline) -> BatchOutcome:
    """Process one message's batch; raise RetryBatch while attempts remain after a failure."""
    set_correlation_id(message.correlation_id)
    outcome = BatchOutcome(tenant=message.tenant, correlation_id=message.correlation_id)
    decoded = decode_batch(tenant=message.tenant, events=message.events)
    metrics: list[tuple[dict[str, str], int]] = []
    if decoded.rejected:
        # Recorded first: a rejected event must survive whatever happens to the rest of the batch.
        deadletter_record_many(letters=_rejection_letters(message, decoded.rejected))
        metrics += _counted_rejections(decoded, outcome)
    return _process_decoded(
        message=message, decoded=decoded, attempt=attempt, pipeline=pipeline, outcome=outcome, metrics=metrics
    )


def _counted_rejections(decoded: DecodedBatch, outcome: BatchOutcome) -> list[tuple[dict[str, str], int]]:
    outcome.dead_lettered += len(decoded.rejected)
    return _count(OUTCOME_DEAD_LETTERED, [raw for raw, _ in decoded.rejected])


def _process_decoded(
    *,
    message: BatchMessage,
    decoded: DecodedBatch,
    attempt: int,
    pipeline: Pipeline,
    outcome: BatchOutcome,
    metrics: list[tuple[dict[str, str], int]],
) -> BatchOutcome:
    """The run of a message whose rejected events are already dead letters."""
    try:
        new_ids = _run_steps(pipeline=pipeline, tenant=message.tenant, events=decoded.events)
    except Exception as exc:
        # A store that gave up part-way (Cosmos PartialWrite) names what it did store, and so does
        # a run that failed after the store (StoredThenFailed). Those are counted as stored now (a
        # retry will find them already there) and never dead-lettered.
        written_now = set(getattr(exc, "stored_ids", ()))
        found_stored = set(getattr(exc, "existing_ids", ())) - written_now
        stored_events = [e for e in decoded.events if e["event_id"] in written_now]
        if attempt < settings.PROCESS_MAX_ATTEMPTS:
            raise _retry_after_failure(
                message=message, events=decoded.events, attempt=attempt, exc=exc, metrics=metrics
            ) from exc
        duplicate_events = [e for e in decoded.events if e["event_id"] in found_stored]
        if _soft_limited(exc):
            # Near the hard limit: the after-store steps are not run again (they are what ran out).
            logger.error("soft time limit: after-store steps given up for tenant %s", message.tenant)
        else:
            _finish_written(pipeline=pipeline, tenant=message.tenant, events=stored_events + duplicate_events)
        new_ids = _finish_exhausted(
            message=message,
            pipeline=pipeline,
            events=[e for e in decoded.events if e["event_id"] not in written_now | found_stored],
            attempt=attempt,
            error=exc,
            outcome=outcome,
        )
        stored_events += [e for e in decoded.events if e["event_id"] in new_ids]
    else:
        stored_events = [e for e in decoded.events if e["event_id"] in new_ids]
        duplicate_events = [e for e in decoded.events if e["event_id"] not in new_ids]
    duplicate_events += decoded.repeated
    outcome.stored = [e["event_id"] for e in stored_events]
    outcome.duplicates += [e["event_id"] for e in duplicate_events]
    metrics += _count(OUTCOME_STORED, stored_events) + _count(OUTCOME_DUPLICATE, duplicate_events)
    platform_incr_many(_PROCESSED_METRIC, metrics)
    logger.info(
        "processed batch of tenant %s: stored=%d duplicate=%d dead_lettered=%d attempt=%d",
        message.tenant,
        len(outcome.stored),
        len(outcome.duplicates),
        outcome.dead_lettered,
        attempt,
    )
    return outcome


def _retry_after_failure(
    *,
    message: BatchMessage,
    events: list[Event],
    attempt: int,
    exc: BaseException,
    metrics: list[tuple[dict[str, str], int]],
) -> RetryBatch:
    """Attempt `attempt` failed and attempts remain: the retry of `events`, logged and counted.

    What the run did store (`stored_ids` of a partial write or of a failure after the store) is
    counted as stored now; its retry will find it there."""
    written_now = set(getattr(exc, "stored_ids", ()))
    countdown = countdown_for(attempt=attempt, error=exc)
    logger.warning(
        "batch of tenant %s failed on attempt %d/%d, retrying in %.1fs: %s",
        message.tenant,
        attempt,
        settings.PROCESS_MAX_ATTEMPTS,
        countdown,
        _describe(exc),
    )
    platform_incr_many(
        _PROCESSED_METRIC,
        metrics
        + _count(OUTCOME_RETRIED, events)
        + _count(OUTCOME_STORED, [e for e in events if e["event_id"] in written_now]),
    )
    return RetryBatch(message=message, events=events, countdown=countdown, cause=_describe(exc))


def _finish_written(*, pipeline: Pipeline, tenant: str, events: list[Event]) -> None:
    """Last attempt: run the after-store steps for the events that are stored, as far as they go.

    Stored events are never dead letters (the ledger would count them twice), so what still fails
    here is only logged. When the batch fails as a whole each event is tried alone, so one bad
    event does not take the scheduled actions of the others with it.
    """
    if not events:
        return
    try:
        _after_store(pipeline=pipeline, tenant=tenant, events=events)
        return
    except SoftTimeLimitExceeded:
        logger.exception("soft time limit reached in the after-store steps of tenant %s", tenant)
        return
    except Exception:
        if len(events) == 1:
            logger.exception("after-store steps gave up on a stored event of tenant %s", tenant)
            return
    for event in events:
        try:
            _after_store(pipeline=pipeline, tenant=tenant, events=[event])
        except SoftTimeLimitExceeded:
            logger.exception("soft time limit reached in the after-store steps of tenant %s", tenant)
            return
        except Exception:
            logger.exception(
                "after-store steps gave up on stored event %s of tenant %s", event["event_id"], tenant
            )


def _soft_limited(exc: BaseException) -> bool:
    return isinstance(exc, SoftTimeLimitExceeded) or isinstance(exc.__cause__, SoftTimeLimitExceeded)


def _after_store(*, pipeline: Pipeline, tenant: str, events: list[Event]) -> None:
    for step in pipeline.after_store:
        step(tenant=tenant, events=events)


def _finish_exhausted(
    *,
    message: BatchMessage,
    pipeline: Pipeline,
    events: list[Event],
    attempt: int,
    error: Exception,
    outcome: BatchOutcome,
) -> set[str]:
    """The last attempt failed. Dead-letter what still fails; return the ids stored after all.

    A transient failure (store down) fails every event alike: dead-letter the batch at once. Any
    other failure may come from one event, so each event is tried alone and only the ones that
    still fail are dead-lettered: one bad event never takes the rest of its batch with it.

    The soft time limit ends the split: the event it interrupted and every event not tried yet are
    dead-lettered at once. Going on would run into the hard limit, which kills the process before
    anything is recorded, and the message would come back for the same last attempt again.
    """
    failed: list[tuple[Event, BaseException]] = []
    new_ids: set[str] = set()
    duplicates: list[Event] = []
    if not events:
        return new_ids
    if isinstance(error, TRANSIENT_ERRORS) or len(events) == 1:
        failed = [(event, error) for event in events]
    else:
        for index, event in enumerate(events):
            try:
                stored = _run_steps(pipeline=pipeline, tenant=message.tenant, events=[event])
            except StoredThenFailed as exc:
                # Stored: counted so, never a dead letter too; its later steps are given up.
                logger.error("event of tenant %s stored, its later steps given up: %s", message.tenant, exc)
                new_ids |= exc.stored_ids
                if not exc.stored_ids:
                    duplicates.append(event)
                if isinstance(exc.__cause__, SoftTimeLimitExceeded):
                    failed += _split_stopped(message, events[index + 1 :], exc.__cause__)
                    break
            except SoftTimeLimitExceeded as exc:
                failed += _split_stopped(message, events[index:], exc)
                break
            except Exception as exc:
                failed.append((event, exc))
            else:
                new_ids |= stored
                if not stored:
                    duplicates.append(event)
    outcome.duplicates += [e["event_id"] for e in duplicates]
    letters = [
        letter
        for event, exc in failed
        for letter in _exhausted_letters(message, [event], attempts=attempt, error=_describe(exc))
    ]
    deadletter_record_many(letters=letters)
    outcome.dead_lettered += len(failed)
    logger.error(
        "gave up on %d event(s) of tenant %s after %d attempts: %s",
        len(failed),
        message.tenant,
        attempt,
        _describe(error),
    )
    platform_incr_many(
        _PROCESSED_METRIC,
        _count(OUTCOME_DEAD_LETTERED, [e for e, _ in failed]) + _count(OUTCOME_DUPLICATE, duplicates),
    )
    return new_ids


def _split_stopped(
    message: BatchMessage, rest: list[Event], exc: SoftTimeLimitExceeded
) -> list[tuple[Event, BaseException]]:
    logger.error(
        "soft time limit reached while retrying %d event(s) of tenant %s one at a time",
        len(rest),
        message.tenant,
    )
    return [(event, exc) for event in rest]


def _reject_message(*, args: Sequence[Any], kwargs: Mapping[str, Any], exc: MessageRejected) -> BatchOutcome:
    tenant = kwargs.get("tenant")
    correlation_id = kwargs.get("correlation_id")
    deadletter_record_many(
        letters=[
            DeadLetterInput(
                reason=Reason.DESERIALIZATION_FAILED,
                kind=DeadLetter.Kind.BATCH,
                tenant=tenant[:64] if isinstance(tenant, str) else "",
                payload=json_payload({"args": list(args), "kwargs": dict(kwargs)}),
                error=str(exc),
                correlation_id=correlation_id[:64] if isinstance(correlation_id, str) else "",
            )
        ]
    )
    platform_incr_many(_PROCESSED_METRIC, [({"event_type": "", "outcome": OUTCOME_DEAD_LETTERED}, 1)])
    return BatchOutcome(tenant="", correlation_id="", dead_lettered=1)


def batch_process_message(
    *, args: Sequence[Any], kwargs: Mapping[str, Any], attempt: int, pipeline: Pipeline | None = None
) -> BatchOutcome:
    """The body of `events.process_batch`: a message that is not a usable batch is a dead letter."""
    try:
        message = parse_message(args=args, kwargs=kwargs)
    except MessageRejected as exc:
        return _reject_message(args=args, kwargs=kwargs, exc=exc)
    return batch_process(message=message, attempt=attempt, pipeline=pipeline or default_pipeline())


def batch_process_together(
    *, messages: Sequence[BatchMessage], pipeline: Pipeline
) -> list[BatchOutcome | Exception]:
    """The first attempts of several messages of one tenant, as one pipeline run.

    A worker that finds small messages queued behind each other runs them together
    (events/coalescing.py): one fraud script, one store transaction and one count of metrics
    instead of one each. Each message keeps a result of its own, in order: its outcome, or the
    exception its own run raised (a `RetryBatch` of its events), which the caller raises for that
    message alone.

    Only first attempts come here, so a run together is never a last attempt and never
    dead-letters for exhaustion. A transient failure (store or Redis away, the soft time limit)
    retries every message, as each alone would have been. Any other failure may come from one
    message's event, so each message is then run alone at once, and only a message that fails
    again is retried.
    """
    tenant = messages[0].tenant
    if any(message.tenant != tenant for message in messages):
        raise ValueError("messages run together must be of one tenant")
    set_correlation_id(messages[0].correlation_id)
    prepared: list[tuple[BatchMessage, DecodedBatch, BatchOutcome, list[tuple[dict[str, str], int]]]] = []
    letters: list[DeadLetterInput] = []
    for message in messages:
        outcome = BatchOutcome(tenant=tenant, correlation_id=message.correlation_id)
        decoded = decode_batch(tenant=tenant, events=message.events)
        letters += _rejection_letters(message, decoded.rejected)
        prepared.append((message, decoded, outcome, _counted_rejections(decoded, outcome)))
    if letters:
        deadletter_record_many(letters=letters)
    owner: dict[str, int] = {}  # event id -> the first message that carries it
    events: list[Event] = []
    for index, (_, decoded, _, _) in enumerate(prepared):
        for event in decoded.events:
            if owner.setdefault(event["event_id"], index) == index:
                events.append(event)
    try:
        new_ids = _run_steps(pipeline=pipeline, tenant=tenant, events=events)
    except Exception as exc:
        if isinstance(exc, TRANSIENT_ERRORS) or isinstance(exc.__cause__, TRANSIENT_ERRORS):
            return [
                _retry_after_failure(message=m, events=decoded.events, attempt=1, exc=exc, metrics=metrics)
                for m, decoded, _, metrics in prepared
            ]
        logger.warning(
            "%d messages of tenant %s failed together, running each alone: %s",
            len(messages),
            tenant,
            _describe(exc),
        )
        return [_process_alone(*each, pipeline=pipeline) for each in prepared]
    counted: list[tuple[dict[str, str], int]] = []
    for index, (_, decoded, outcome, metrics) in enumerate(prepared):
        stored = [e for e in decoded.events if e["event_id"] in new_ids and owner[e["event_id"]] == index]
        stored_ids = {e["event_id"] for e in stored}
        duplicates = [e for e in decoded.events if e["event_id"] not in stored_ids] + decoded.repeated
        outcome.stored = [e["event_id"] for e in stored]
        outcome.duplicates += [e["event_id"] for e in duplicates]
        counted += metrics + _count(OUTCOME_STORED, stored) + _count(OUTCOME_DUPLICATE, duplicates)
    platform_incr_many(_PROCESSED_METRIC, counted)
    outcomes = [outcome for _, _, outcome, _ in prepared]
    logger.info(
        "processed %d messages of tenant %s together: stored=%d duplicate=%d dead_lettered=%d",
        len(messages),
        tenant,
        sum(len(o.stored) for o in outcomes),
        sum(len(o.duplicates) for o in outcomes),
        sum(o.dead_lettered for o in outcomes),
    )
    return list(outcomes)


def _process_alone(
    message: BatchMessage,
    decoded: DecodedBatch,
    outcome: BatchOutcome,
    metrics: list[tuple[dict[str, str], int]],
    *,
    pipeline: Pipeline,
) -> BatchOutcome | Exception:
    set_correlation_id(message.correlation_id)
    try:
        return _process_decoded(
            message=message, decoded=decoded, attempt=1, pipeline=pipeline, outcome=outcome, metrics=metrics
        )
    except Exception as exc:
        return exc


def batch_give_up_after_worker_losses(
    *, args: Sequence[Any], kwargs: Mapping[str, Any], losses: int, store: EventStore | None = None
) -> BatchOutcome:
    """The message's previous `losses` deliveries all died with their worker: do not run it again.

    Nothing says which event is to blame, so every event that is not already stored becomes a
    `MaxRetriesExceeded` dead letter; a requeue publishes each one alone, so only the culprit can
    take a worker down again (and ends here again, alone). Events a killed delivery did store are
    left stored and counted as duplicates, not dead-lettered too: the ledger counts each event once.
    Their after-store steps (scheduled actions) may not have run; the log line names how many.
    """
    try:
        message = parse_message(args=args, kwargs=kwargs)
    except MessageRejected as exc:
        return _reject_message(args=args, kwargs=kwargs, exc=exc)
    set_correlation_id(message.correlation_id)
    outcome = BatchOutcome(tenant=message.tenant, correlation_id=message.correlation_id)
    decoded = decode_batch(tenant=message.tenant, events=message.events)
    store = store or get_event_store()
    try:
        stored = [e for e in decoded.events if store.get(tenant=message.tenant, event_id=e["event_id"])]
    except Exception:
        # Which events are stored cannot be told: dead-letter them all rather than run the batch
        # again. A requeue of one that was stored is recognised as a duplicate by the store.
        logger.exception("could not check which events of a lost batch are stored")
        stored = []
    stored_ids = {e["event_id"] for e in stored}
    doomed = [e for e in decoded.events if e["event_id"] not in stored_ids]
    error = (
        f"WorkerLost: the worker processing this batch was lost {losses} times "
        "(process killed, out of memory or hard time limit); it was not run again"
    )
    deadletter_record_many(
        letters=_rejection_letters(message, decoded.rejected)
        + _exhausted_letters(message, doomed, attempts=losses, error=error)
    )
    outcome.dead_lettered = len(decoded.rejected) + len(doomed)
    outcome.duplicates = [e["event_id"] for e in stored + decoded.repeated]
    logger.error(
        "gave up on a batch of tenant %s after %d lost workers: dead_lettered=%d already_stored=%d",
        message.tenant,
        losses,
        outcome.dead_lettered,
        len(stored),
    )
    platform_incr_many(
        _PROCESSED_METRIC,
        _count(OUTCOME_DEAD_LETTERED, [raw for raw, _ in decoded.rejected] + doomed)
        + _count(OUTCOME_DUPLICATE, stored + decoded.repeated),
    )
    return outcome
