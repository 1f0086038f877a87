"""Durable publish of one request's events as one message (docs/api.md, "Delivery guarantee").

A 202 is returned only after this returns: on Redis the LPUSH reply (with the embedded server's
`appendfsync always`, after the write reached disk), on RabbitMQ the publisher confirm. Transient
broker errors get a short bounded retry; then the caller answers 503.
"""

from __future__ import annotations

import contextlib
import logging
import threading
import time
from collections import Counter
from collections.abc import Iterator, Sequence
from contextlib import contextmanager, nullcontext
from typing import Any

import orjson
from django.conf import settings

from cloudscale_project.celery import app
from cloudscale_project.errors import BrokerUnavailable

logger = logging.getLogger(__name__)

# The one name of the batch task (events/tasks.py) that publishers, requeue and the Service Bus
# dead-letter import all refer to.
TASK_NAME = "events.process_batch"


def _broker_errors() -> tuple[type[BaseException], ...]:
    """Everything a publish can raise when the broker is away, on every transport we support."""
    # redis-py raises ValueError ("I/O operation on closed file") when the broker's socket is closed
    # under a publish (seen when the embedded broker is killed): a 503, like any lost connection.
    errors: list[type[BaseException]] = [OSError, TimeoutError, ValueError]
    from kombu.exceptions import KombuError

    errors.append(KombuError)
    try:
        from redis.exceptions import RedisError

        errors.append(RedisError)
    except ImportError:  # pragma: no cover - redis is a dependency
        pass
    try:  # Service Bus raises azure-core errors (ServiceRequestError) that kombu does not map
        from azure.core.exceptions import AzureError

        errors.append(AzureError)
    except ImportError:  # pragma: no cover
        pass
    return tuple(errors)


_BROKER_ERRORS = _broker_errors()

# What a message costs beyond its events: Celery's envelope and headers, and base64 (4/3) on
# transports that encode the body (Service Bus).
_ENVELOPE_BYTES = 2048
_ENCODING_FACTOR = 4 / 3


def publish_events(*, tenant: str, events: Sequence[dict[str, Any]], correlation_id: str) -> None:
    """Durably publish the events in an `events.process_batch` message; BrokerUnavailable if not.

    Small publishes (single-event requests) of one tenant that are concurrent in this process share
    one message: a group commit (`GroupCommitter`). Each caller still returns only once that message
    is in the broker, and each gets the broker's error if it is not, so every 202 stays true; the
    events keep their own ids, receipts and dedup reservations.
    """
    if not _groupable(events):
        _publish_message(tenant=tenant, events=events, correlation_id=correlation_id)
        return
    _group_committer.publish(tenant=tenant, events=events, correlation_id=correlation_id)


def _few(events: int) -> bool:
    """Few enough events to share a message, with the group commit on (large requests are a
    message of their own already)."""
    return settings.GROUP_COMMIT_LINGER_SECONDS > 0 and events <= settings.GROUP_COMMIT_MAX_EVENTS // 4


def _groupable(events: Sequence[Any]) -> bool:
    return _few(len(events)) and not (settings.BROKER_MAX_MESSAGE_BYTES and _size(events) > _budget() / 4)


def expecting_publish(*, tenant: str, events: int) -> contextlib.AbstractContextManager[None]:
    """Wrap a request's path to its publish: a group leader publishing meanwhile waits for it.

    A request of more events than a group takes announces nothing (it will be a message of its
    own); one that ends without publishing (rejected, duplicates, errors) stops being waited for
    when the block ends. Not reentrant: one announcement per request.
    """
    if not _few(events):
        return nullcontext()
    return _group_committer.expecting(tenant)


def _publish_message(*, tenant: str, events: Sequence[dict[str, Any]], correlation_id: str) -> None:
    """One broker message, published with a short bounded retry."""
    try:
        app.send_task(
            TASK_NAME,
            kwargs={"tenant": tenant, "events": list(events), "correlation_id": correlation_id},
            queue=settings.QUEUE_NAME,
            retry=True,
            retry_policy={
                "max_retries": settings.PUBLISH_ATTEMPTS - 1,
                "interval_start": 0.05,
                "interval_step": 0.2,
                "interval_max": 0.5,
            },
            ignore_result=True,
            # What Flower shows for the task: a summary, not Celery's repr of up to 500 events
            # (building that repr was a tenth of a single-event publish's CPU).
            argsrepr="()",
            kwargsrepr=_summary(tenant=tenant, events=len(events), correlation_id=correlation_id),
        )
    except _BROKER_ERRORS as exc:
        logger.warning(
            "publish failed for %d event(s) of %s: %s", len(events), tenant, exc,
            extra={"tenant": tenant},
        )  # fmt: skip
        raise BrokerUnavailable(settings.BROKER_RETRY_AFTER_SECONDS) from exc


def _summary(*, tenant: str, events: int, correlation_id: str) -> str:
    return f"{{'tenant': {tenant!r}, 'events': <{events} event(s)>, 'correlation_id': {correlation_id!r}}}"


class _Group:
    """The events of one tenant waiting to share a message, and the outcome every member waits for."""

    def __init__(self, *, tenant: str, correlation_id: str) -> None:
        self.tenant = tenant
        self.correlation_id = correlation_id  # the first member's: the message's own
        self.events: list[dict[str, Any]] = []
        self.bytes = 0
        self.full = False
        self.done = threading.Event()
        self.error: BaseException | None = None


class GroupCommitter:
    """Coalesces concurrent small publishes of one process (gunicorn's threads) per tenant.

    The first caller of a group leads; the others join it and wait for its outcome. The leader
    publishes as soon as nothing more is coming: while requests of its tenant that announced a
    publish (`expecting`) have not reached it yet, or while the tenant's previous message is still
    being published, it waits for them, never longer than `GROUP_COMMIT_LINGER_SECONDS` and never
    past a full group. So a lone request is published at once (no added latency when the API is
    quiet) and a busy process sends one message per round of concurrent requests instead of one
    per request: the group commit of databases' write-ahead logs. A message never holds more than
    `GROUP_COMMIT_MAX_EVENTS` events or the broker's size budget.
    """

    # How long a member waits for its leader before giving up on the process: a leader always sets
    # the outcome (finally), so this only bounds a bug, far above any publish's retry time.
    MEMBER_WAIT_SECONDS = 60.0

    def __init__(self) -> None:
        self._changed = threading.Condition()
        self._open: dict[str, _Group] = {}
        self._pending: Counter[str] = Counter()  # announced, not yet publishing, by tenant
        self._publishing: Counter[str] = Counter()  # messages being published, by tenant
        self._waiting = 0  # leaders waiting for a change: only then is there anyone to notify
        self._local = threading.local()

    @contextmanager
    def expecting(self, tenant: str) -> Iterator[None]:
        """Announce that this thread is about to publish a small request of `tenant`: a leader
        publishing meanwhile waits (briefly) for it to join."""
        with self._changed:
            self._pending[tenant] += 1
        self._local.pending = tenant
        try:
            yield
        finally:
            self._arrived(tenant)

    def _arrived(self, tenant: str) -> None:
        """This thread's announced publish arrived (or will never come): stop waiting for it."""
        if getattr(self._local, "pending", None) != tenant:
            return
        self._local.pending = None
        with self._changed:
            self._pending[tenant] -= 1
            if self._pending[tenant] <= 0:
                del self._pending[tenant]
            self._notify()

    def publish(self, *, tenant: str, events: Sequence[dict[str, Any]], correlation_id: str) -> None:
        self._arrived(tenant)
        size = _size(events)
        with self._changed:
            group = self._open.get(tenant)
            leader = group is None or not self._fits(group, len(events), size)
            if leader:
                group = _Group(tenant=tenant, correlation_id=correlation_id)
                self._open[tenant] = group
            assert group is not None
            group.events.extend(events)
            group.bytes += size
            if not self._fits(group, 1, 0):
                group.full = True
            self._notify()
        if leader:
            self._lead(group)
        elif not group.done.wait(self.MEMBER_WAIT_SECONDS):
            raise BrokerUnavailable(settings.BROKER_RETRY_AFTER_SECONDS)
        if group.error is not None:
            raise group.error

    def _notify(self) -> None:
        """Wake the waiting leaders to look again (the caller holds the condition's lock)."""
        if self._waiting:
            self._changed.notify_all()

    def _fits(self, group: _Group, events: int, size: int) -> bool:
        budget = _budget()
        within_bytes = budget <= 0 or group.bytes + size <= budget
        return len(group.events) + events <= settings.GROUP_COMMIT_MAX_EVENTS and within_bytes

    def _lead(self, group: _Group) -> None:
        tenant = group.tenant
        deadline = time.monotonic() + settings.GROUP_COMMIT_LINGER_SECONDS
        try:
            with self._changed:
                while not group.full and (self._pending[tenant] > 0 or self._publishing[tenant] > 0):
                    remaining = deadline - time.monotonic()
                    if remaining <= 0:
                        break
                    self._waiting += 1
                    try:
                        self._changed.wait(remaining)
                    finally:
                        self._waiting -= 1
                if self._open.get(tenant) is group:
                    del self._open[tenant]  # closed: later callers start a new group
                self._publishing[tenant] += 1
            try:
                _publish_message(tenant=tenant, events=group.events, correlation_id=group.correlation_id)
            finally:
                with self._changed:
                    self._publishing[tenant] -= 1
                    if self._publishing[tenant] <= 0:
                        del self._publishing[tenant]
                    self._notify()
        except BaseException as exc:  # every member must hear the outcome, whatever it is
            group.error = exc
            raise
        finally:
            group.done.set()


def _event_size(event: dict[str, Any]) -> int:
    """An event's share of a message body: its JSON and a separator."""
    return len(orjson.dumps(event)) + 2


def _size(events: Sequence[dict[str, Any]]) -> int:
    return sum(_event_size(event) for event in events)


def _budget_for(max_message_bytes: int) -> float:
    """Bytes of events a message of `max_message_bytes` may carry, after envelope and encoding."""
    return max_message_bytes / _ENCODING_FACTOR - _ENVELOPE_BYTES


def _budget() -> float:
    """Bytes of events one message may carry on this broker (0: no limit)."""
    if settings.BROKER_MAX_MESSAGE_BYTES <= 0:
        return 0
    return _budget_for(settings.BROKER_MAX_MESSAGE_BYTES)


def split_for_broker(events: Sequence[dict[str, Any]], max_message_bytes: int) -> list[list[dict[str, Any]]]:
    """Split one request's events into as few messages as fit the broker's size limit (0 = no limit).

    Service Bus Standard refuses messages over 256 KB; a 500-event batch can exceed that.
    """
    if not events:
        return []
    if max_message_bytes <= 0:
        return [list(events)]
    budget = _budget_for(max_message_bytes)
    chunks: list[list[dict[str, Any]]] = [[]]
    used = 0.0
    for event in events:
        size = _event_size(event)
        if chunks[-1] and used + size > budget:
            chunks.append([])
            used = 0.0
        chunks[-1].append(event)
        used += size
    return chunks


_group_committer = GroupCommitter()
