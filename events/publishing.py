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
import uuid
from collections import Counter
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager, nullcontext
from functools import cache
from typing import Any, Generic, TypeVar
from urllib.parse import urlsplit

import orjson
import redis
from django.conf import settings

from cloudscale_project.celery import app
from cloudscale_project.errors import BrokerUnavailable
from cloudscale_project.publish_receipts import published_key

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


def few_enough_to_group(events: int) -> bool:
    """Few enough events to share a message, with the group commit on (large requests are a
    message of their own already)."""
    return settings.GROUP_COMMIT_LINGER_SECONDS > 0 and events <= settings.GROUP_COMMIT_MAX_EVENTS // 4


def groupable(*, events: int, size: int) -> bool:
    """Whether a request of `events` events of `size` bytes (`events_size`) may join a group
    commit: few, and small next to a message."""
    return few_enough_to_group(events) and not (settings.BROKER_MAX_MESSAGE_BYTES and size > _budget() / 4)


class PublishUncertain(BrokerUnavailable):
    """A failed publish that may have reached the broker: the Redis transport wrote a receipt with
    the message if it did (`publish_landed`). The caller must not release the events' ids yet."""

    def __init__(self, retry_after: int, *, task_id: str) -> None:
        super().__init__(retry_after)
        self.task_id = task_id


def _publish_url() -> str:
    url: str = app.conf.broker_write_url or app.conf.broker_url  # where the API's publishes go
    return url


def receipts_on_publish() -> bool:
    """Whether the transport of the API's publishes writes a receipt with each (ours, which
    settings register for redis:// when the configured broker is a redis:// one)."""
    return settings.BROKER_SCHEME == "redis" and urlsplit(_publish_url()).scheme == "redis"


@cache
def _broker_client(url: str) -> redis.Redis:
    return redis.Redis.from_url(url, socket_timeout=2, socket_connect_timeout=2)


# The message header that carries its batch's event count: a worker's main process leaves big bodies
# undecoded and sizes its jobs by it (events/coalescing.py).
EVENTS_HEADER = "cloudscale_events"


def publish_landed(task_id: str) -> bool:
    """Whether the broker has the message of `task_id`, from the receipt its transport wrote in the
    same MULTI. Raises a redis-py error (or OSError) while the broker cannot answer."""
    return bool(_broker_client(_publish_url()).exists(published_key(task_id)))


def publish_events(*, tenant: str, events: Sequence[dict[str, Any]], correlation_id: str) -> None:
    """Durably publish the events as one `events.process_batch` message, with a short bounded
    retry; BrokerUnavailable if not, PublishUncertain when the broker may have it all the same.

    Small requests reach this already grouped: the API's group commit (`GroupCommitter`, used by
    events/ingestion.py) publishes the events of concurrent requests of one tenant in one call.
    """
    task_id = str(uuid.uuid4())
    try:
        app.send_task(
            TASK_NAME,
            task_id=task_id,
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
            headers={EVENTS_HEADER: len(events)},
            # What Flower shows for the task: a summary, not Celery's repr of up to 500 events
            # (building that repr was a tenth of a single-event publish's CPU).
            argsrepr="()",
            kwargsrepr=_summary(tenant=tenant, events=len(events), correlation_id=correlation_id),
        )
    except _BROKER_ERRORS as exc:
        logger.warning(
            "publish failed for %d event(s) of %s (task %s): %s", len(events), tenant, task_id, exc,
            extra={"tenant": tenant},
        )  # fmt: skip
        if not receipts_on_publish():
            raise BrokerUnavailable(settings.BROKER_RETRY_AFTER_SECONDS) from exc
        # The server may have applied the publish and died before answering: its receipt tells.
        try:
            landed = publish_landed(task_id)
        except _BROKER_ERRORS:
            # Not yet: the caller keeps the ids reserved and asks again once the broker answers
            # (events.ledger.LateCommits).
            raise PublishUncertain(settings.BROKER_RETRY_AFTER_SECONDS, task_id=task_id) from exc
        if not landed:
            raise BrokerUnavailable(settings.BROKER_RETRY_AFTER_SECONDS) from exc
        logger.warning("the broker has task %s although its publish failed: published", task_id)


def _summary(*, tenant: str, events: int, correlation_id: str) -> str:
    return f"{{'tenant': {tenant!r}, 'events': <{events} event(s)>, 'correlation_id': {correlation_id!r}}}"


Member = TypeVar("Member")
# The leader's work for a closed group: one outcome per member, in order (None: it succeeded).
Flush = Callable[[str, list[Member]], Sequence[BaseException | None]]


class _Group(Generic[Member]):
    """The members of one tenant waiting to be flushed together, and their outcomes."""

    def __init__(self, tenant: str) -> None:
        self.tenant = tenant
        self.members: list[Member] = []
        self.events = 0
        self.bytes = 0
        self.full = False
        self.done = threading.Event()
        self.outcomes: Sequence[BaseException | None] = ()
        self.error: BaseException | None = None


class GroupCommitter(Generic[Member]):
    """Coalesces concurrent small requests of one process (gunicorn's threads) per tenant.

    The first caller of a group leads; the others join it and wait for its outcome. The leader
    flushes the group (`flush`: for the API, reserve every member's ids, publish one message,
    confirm and count them) as soon as nothing more is coming: while requests of its tenant that
    announced themselves (`expecting`) have not reached it yet, or while the tenant's previous
    group is still being flushed, it waits for them, never longer than
    `GROUP_COMMIT_LINGER_SECONDS` and never past a full group. So a lone request is flushed at
    once (no added latency when the API is quiet) and a busy process makes one message and one
    round of shared-state calls per round of concurrent requests instead of one per request: the
    group commit of databases' write-ahead logs. A group never holds more than
    `GROUP_COMMIT_MAX_EVENTS` events or the broker's size budget.

    Nor does a group wait for anyone once every request thread of the process is inside
    `submit` (`serve_with_threads`: gunicorn's gthread worker says how many it runs). No thread is
    left to bring another request, so waiting out the gather window only stalls the process: with
    50 clients on 8 threads it held every full group for the whole window.

    While the tenant's requests have overlapped in the last `OVERLAP_MEMORY_SECONDS` (several
    clients at once), a new group also waits up to `GROUP_COMMIT_GATHER_SECONDS` for requests that
    have not announced themselves yet: under a steady stream of requests that seldom overlap, most
    groups were one request (docs/decisions.md, "Group commit of single events"). A client that
    sends one request at a time never overlaps itself, so it is never held.
    """

    # How long a member waits for its leader before giving up on the process: a leader always sets
    # the outcome (finally), so this only bounds a bug, far above any publish's retry time.
    MEMBER_WAIT_SECONDS = 60.0

    # How long after two of a tenant's requests last overlapped its groups still gather newcomers.
    OVERLAP_MEMORY_SECONDS = 1.0

    def __init__(self, flush: Flush[Member]) -> None:
        self._flush = flush
        self._changed = threading.Condition()
        self._open: dict[str, _Group[Member]] = {}
        self._pending: Counter[str] = Counter()  # announced, not yet submitted, by tenant
        self._flushing: Counter[str] = Counter()  # groups being flushed, by tenant
        self._overlapped: dict[str, float] = {}  # when a request last arrived beside another, by tenant
        self._waiting = 0  # leaders waiting for a change: only then is there anyone to notify
        self._inside = 0  # threads inside `submit`, any tenant
        self._threads: int | None = None  # request threads of the process, when the server says
        self._local = threading.local()

    def serve_with_threads(self, threads: int) -> None:
        """The process answers requests on `threads` threads (and no more): a group that holds all
        of them, with none announced, is flushed at once."""
        self._threads = threads

    @property
    def request_threads(self) -> int | None:
        """The request threads the server said it runs (None: not told, so never assumed)."""
        return self._threads

    def expecting(self, tenant: str, events: int) -> contextlib.AbstractContextManager[None]:
        """Wrap a request's path to `submit`: a leader flushing meanwhile waits for it.

        A request of more events than a group takes announces nothing (it will be flushed alone);
        one that ends without submitting (errors) stops being waited for when the block ends.
        One announcement per request thread: a request announced earlier (the rate limiter
        announces a single event before it is parsed) stays announced once, and announcing
        another tenant (its key changed meanwhile) ends the earlier announcement.
        """
        if not few_enough_to_group(events):
            return nullcontext()
        earlier = getattr(self._local, "pending", None)
        if earlier == tenant:
            return nullcontext()
        if earlier is not None:
            self._arrived(earlier)
        return self._expecting(tenant)

    @contextmanager
    def _expecting(self, tenant: str) -> Iterator[None]:
        with self._changed:
            if self._pending[tenant] or self._flushing[tenant] or tenant in self._open:
                self._overlapped[tenant] = time.monotonic()
            self._pending[tenant] += 1
        self._local.pending = tenant
        try:
            yield
        finally:
            self._arrived(tenant)

    def _arrived(self, tenant: str) -> None:
        """This thread's announced request arrived (or will never come): stop waiting for it."""
        if getattr(self._local, "pending", None) != tenant:
            return
        self._local.pending = None
        with self._changed:
            self._pending[tenant] -= 1
            if self._pending[tenant] <= 0:
                del self._pending[tenant]
                self._notify()  # a leader waits for none of them any more

    def submit(self, *, tenant: str, member: Member, events: int, size: int) -> None:
        """Flush `member` with whatever else of `tenant` is concurrent; raise its own failure."""
        self._arrived(tenant)
        with self._changed:
            self._inside += 1
            group = self._open.get(tenant)
            closed = group is not None and not self._fits(group, events, size)
            if closed and group is not None:
                group.full = True  # replaced below, so nobody else can join it: its leader may go
            leader = group is None or closed
            if leader:
                group = _Group(tenant)
                self._open[tenant] = group
            assert group is not None
            position = len(group.members)
            group.members.append(member)
            group.events += events
            group.bytes += size
            if not self._fits(group, 1, 0):
                group.full = True
            # Wake the waiting leaders only when one of them may stop waiting: a group filled or
            # closed, or every request thread inside. A member that merely joins changes no wait.
            if group.full or closed or self._every_thread_inside():
                self._notify()
        try:
            if leader:
                self._lead(group)
            elif not group.done.wait(self.MEMBER_WAIT_SECONDS):
                raise BrokerUnavailable(settings.BROKER_RETRY_AFTER_SECONDS)
        finally:
            with self._changed:
                self._inside -= 1  # fewer inside only shortens no wait: nobody to notify
        if group.error is not None:
            raise group.error
        outcome = group.outcomes[position]
        if outcome is not None:
            raise outcome

    def _every_thread_inside(self) -> bool:
        """Whether every request thread of the process is inside `submit`, so none is left to
        bring another request (never, when the server did not say how many it runs)."""
        return self._threads is not None and self._inside >= self._threads

    def _notify(self) -> None:
        """Wake the waiting leaders to look again (the caller holds the condition's lock).

        Called only on a change that can end a leader's wait (a tenant's last announced request
        arrived, its last flush ended, a group filled or closed, every request thread inside):
        each wake-up costs the process a thread switch, and under 50 clients waking the leader
        for every arrival was 6 % of the API's samples."""
        if self._waiting:
            self._changed.notify_all()

    def _gather_seconds(self, tenant: str, now: float) -> float:
        """How long a new group of `tenant` waits for requests not yet announced: the gather window
        while the tenant's requests have overlapped lately (several clients), else nothing.

        Called with the lock released: a stale read only shifts one group's wait."""
        overlapped = self._overlapped.get(tenant)
        if overlapped is None or now - overlapped > self.OVERLAP_MEMORY_SECONDS:
            return 0.0
        return min(settings.GROUP_COMMIT_GATHER_SECONDS, settings.GROUP_COMMIT_LINGER_SECONDS)

    def _fits(self, group: _Group[Member], events: int, size: int) -> bool:
        budget = _budget()
        within_bytes = budget <= 0 or group.bytes + size <= budget
        return group.events + events <= settings.GROUP_COMMIT_MAX_EVENTS and within_bytes

    def _lead(self, group: _Group[Member]) -> None:
        tenant = group.tenant
        opened = time.monotonic()
        deadline = opened + settings.GROUP_COMMIT_LINGER_SECONDS
        gather_until = opened + self._gather_seconds(tenant, opened)
        try:
            with self._changed:
                while not group.full:
                    now = time.monotonic()
                    if self._pending[tenant] > 0 or self._flushing[tenant] > 0:
                        remaining = deadline - now
                    elif self._every_thread_inside():
                        break  # nothing more can come
                    else:
                        remaining = gather_until - now
                    if remaining <= 0:
                        break
                    self._waiting += 1
                    try:
                        self._changed.wait(remaining)
                    finally:
                        self._waiting -= 1
                if self._open.get(tenant) is group:
                    del self._open[tenant]  # closed: later callers start a new group
                self._flushing[tenant] += 1
            try:
                group.outcomes = self._flush(tenant, group.members)
            finally:
                with self._changed:
                    self._flushing[tenant] -= 1
                    if self._flushing[tenant] <= 0:
                        del self._flushing[tenant]
                        self._notify()  # the tenant's next group waits for no flush now
        except BaseException as exc:  # every member must hear the outcome, whatever it is
            group.error = exc
            raise
        finally:
            group.done.set()


def _event_size(event: dict[str, Any]) -> int:
    """An event's share of a message body: its JSON and a separator."""
    return len(orjson.dumps(event)) + 2


def events_size(events: Sequence[dict[str, Any]]) -> int:
    """What the events add to a message body (for a group's size budget)."""
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
