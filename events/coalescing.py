"""Batch messages queued behind each other in a worker run as one pipeline job.

A single-event request costs the worker a message's fixed work, most of it Celery's and the
pipeline's rather than the event's: a pool round trip, a delivery count, a fraud script, a store
transaction (docs/benchmarks.md). Under load, messages wait in the worker's main process for a free
pool process anyway (Celery's semaphore of pool slots). When a slot frees, the waiting
`events.process_batch` messages that fit one job (`WORKER_JOB_EVENTS` events in all, four full
batches by default) go to it as one job instead of one each; with a free slot a message goes at
once, alone, as Celery sends it. Full batches gain too: on SQLite one store transaction writes each
changed index page once for the whole job, not once per message.

A big body is not decoded in this process (events/message_bodies.py): its event count comes from
the `cloudscale_events` header the API's publisher sets (`EVENTS_HEADER`). A big message without
that header runs alone.

In the job each message is still its own Celery task: the pool process runs Celery's tracer for
each in turn (its signals, logging, retry and failure handling), and the main process acks,
rejects or requeues each message by its own result. What is shared is the work: the first message
of a tenant to run processes the events of all that tenant's messages of the job in one pipeline
run (`events.pipeline.batch_process_together`), and the others take their result from it.

Only first deliveries run together: a message that was retried or redelivered (its worker died)
runs alone, so a message that kills its worker takes the others of its job with it once at most,
and its own loss count (events/deliveries.py) is then its own again.

Main process: `Coalescer`, installed by the worker's consumer (events/consumer.py). Pool process:
`run_coalesced` and `current_job`, read by the task body (events/tasks.py).
"""

from __future__ import annotations

import logging
import time
from collections import defaultdict, deque
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from functools import cache
from typing import Any, cast
from weakref import ref

from billiard.einfo import ExceptionInfo
from celery import current_app
from celery.app.trace import fast_trace_task, trace_task_ret
from celery.worker import state as worker_state
from django.conf import settings
from kombu.serialization import loads as loads_message
from kombu.serialization import prepare_accept_content

from events.deliveries import deliveries_started
from events.message_bodies import body_left_to_pool
from events.pipeline import (
    BatchMessage,
    BatchOutcome,
    MessageRejected,
    batch_process_together,
    default_pipeline,
    parse_message,
)
from events.publishing import EVENTS_HEADER, TASK_NAME

logger = logging.getLogger(__name__)

# The most messages in one job: with one-event messages a backlog job stays short, and a job that
# dies takes few others with it.
JOB_MESSAGES_MAX = 16

# What the pool process gets for one message: Celery's own arguments of its tracer.
TraceCall = tuple[str, str, dict[str, Any], Any, str | None, str | None]


# --- main process ------------------------------------------------------------------------------------


class Coalescer:
    """The worker consumer's `on_task_request`: batch messages wait for a pool slot here, and a
    slot takes every waiting one that fits one job.

    Each waiting message holds a place in Celery's semaphore of pool slots, as Celery's own path
    does. A place that comes up after its message already left with an earlier job hands the slot
    on at once (`release`), so each job still holds exactly one slot.

    A worker that keeps up has a free slot for each message as it comes, so nothing would ever
    wait. While messages come close together (the last two within `WORKER_GATHER_SECONDS`), a job
    that gets a slot stays open that long for the messages that arrive meanwhile; a message that
    comes alone goes at once. The wait delays processing, never a client's 202: the API answered
    once the broker had the message.

    A message held here does not count against the worker's prefetch until its job ends (`_hold`),
    so the jobs of a backlog, or of a gather, are not bounded by the prefetch but by
    `JOB_MESSAGES_MAX` and `WORKER_JOB_EVENTS`.
    """

    def __init__(
        self,
        *,
        controller: Any,
        fallback: Callable[[Any], Any],
        timer: Any = None,
        qos: Callable[[], Any] = lambda: None,
    ) -> None:
        self._controller = controller
        self._qos = qos  # the consumer's prefetch (kombu QoS), once it has one
        self._credited: dict[str, int] = {}  # held messages that added one to the prefetch: id → events
        self._fallback = fallback  # Celery's own: every other message goes this way
        self._timer = timer  # the consumer's event-loop timer; None: no gathering
        self._waiting: deque[Any] = deque()
        self._open: list[Any] | None = None  # a job that holds a slot and gathers until its timer
        self._open_events = 0
        self._open_timer: Any = None
        self._last_arrival = float("-inf")

    def __call__(self, request: Any) -> Any:
        semaphore = getattr(self._controller, "semaphore", None)
        if semaphore is None or not mergeable(request):
            return self._fallback(request)
        now = time.monotonic()
        close_together = now - self._last_arrival < settings.WORKER_GATHER_SECONDS
        self._last_arrival = now
        events = event_count(request)
        if (
            self._open is not None
            and len(self._open) < JOB_MESSAGES_MAX
            and self._open_events + events <= settings.WORKER_JOB_EVENTS
        ):
            self._open.append(request)
            self._open_events += events
            self._hold(request, events)
            if self._nothing_more_can_come():
                self._close_open_job()
            return None
        self._waiting.append(request)
        semaphore.acquire(lambda: self._on_slot(gather=close_together))
        if any(r is request for r in self._waiting) or any(r is request for r in self._open or ()):
            self._hold(request, events)  # it waits for a slot, or gathers others with one
        return None

    def forget(self) -> None:
        """The broker connection closed: drop every message held here, with its gather timer.

        Their delivery tags belong to the closed channel, so they can no longer be acked: the
        broker delivers them again (unacked messages come back), as Celery drops its own reserved
        requests then (`Consumer.on_close`, which also resets the semaphore of slots these held).
        Kept, a gather's timer outlived the connection and ran its stale job, and the held
        messages' prefetch credits were taken back from the new connection's prefetch."""
        self._take_open_job()
        self._waiting.clear()
        self._credited.clear()

    def _hold(self, request: Any, events: int) -> None:
        """A message held here, not in the pool, does not count against the prefetch: one more may
        come, so a backlog reaches the pool in jobs of more than the prefetch. The credit is given
        back when the message's job ends (`_release`), up to a bound per pool process of messages
        and of events (a full job each), so the worker never holds more than a job's worth a pool
        process beyond its prefetch: another worker still gets its share of a backlog."""
        qos = self._qos()
        processes = max(1, int(self._controller.pool.num_processes))
        if (
            qos is None
            or len(self._credited) >= JOB_MESSAGES_MAX * processes
            or sum(self._credited.values()) + events > settings.WORKER_JOB_EVENTS * processes
        ):
            return
        before = qos.value
        qos.increment_eventually()
        if qos.value > before:  # not at the consumer's maximum, nor unlimited (0)
            self._credited[request.id] = events

    def _release(self, requests: Sequence[Any]) -> None:
        credited = [r.id for r in requests if r.id in self._credited]
        qos = self._qos()
        if credited and qos is not None:
            for request_id in credited:
                del self._credited[request_id]
            qos.decrement_eventually(len(credited))

    def _on_slot(self, *, gather: bool = False) -> None:
        if not self._waiting:
            self._controller.semaphore.release()
            return
        job = [self._waiting.popleft()]
        events = event_count(job[0])
        while (
            self._waiting
            and len(job) < JOB_MESSAGES_MAX
            and events + event_count(self._waiting[0]) <= settings.WORKER_JOB_EVENTS
        ):
            events += event_count(self._waiting[0])
            job.append(self._waiting.popleft())
        if gather and len(job) == 1 and self._may_gather() and not self._nothing_more_can_come():
            self._open, self._open_events = job, events
            self._open_timer = self._timer.call_after(settings.WORKER_GATHER_SECONDS, self._close_open_job)
            return
        self._dispatch(job)

    def _may_gather(self) -> bool:
        """No job gathers yet and no message waits for a slot, so holding this one open keeps no
        waiting message from a process, whether or not the pool's other processes are busy. Under
        a backlog messages wait for slots, and the waiting ones already go together.

        Gathering only while the rest of the pool was idle left about two in five messages of a
        stream of single events to run alone on the second process, each with a pipeline run and a
        pool round trip of its own; gathering there too took the worker's CPU per single-event
        request to 0.68x (docs/benchmarks.md, "Levers, thirtieth round")."""
        return self._timer is not None and self._open is None and not self._waiting

    def _nothing_more_can_come(self) -> bool:
        """The worker holds all the unacked messages the broker lets it have, or a full job:
        waiting longer would only idle the slot."""
        if self._open is not None and len(self._open) >= JOB_MESSAGES_MAX:
            return True
        qos = self._qos()
        limit = int(qos.value) if qos is not None else 0
        return bool(limit) and len(worker_state.reserved_requests) >= limit

    def _close_open_job(self) -> None:
        """The gather ends: its timer fired, or no more can come (then its timer is cancelled)."""
        job = self._take_open_job()
        if job:
            self._dispatch(job)

    def _take_open_job(self) -> list[Any] | None:
        """The gathering job, no longer open; its timer cancelled (a fired one ignores that)."""
        job, self._open, self._open_events = self._open, None, 0
        timer, self._open_timer = self._open_timer, None
        if timer is not None:
            timer.cancel()
        return job

    def _dispatch(self, job: list[Any]) -> None:
        """Send a job that holds a slot to the pool."""
        live = [request for request in job if not request.revoked()]  # revoked() acks a revoked one
        if len(live) < len(job):
            self._release([request for request in job if request not in live])
        if not live:
            self._controller.semaphore.release()
        elif len(live) == 1:
            self._release(live)  # alone, it counts against the prefetch again from now on
            self._controller._process_task(live[0])
        else:
            self._execute_together(live)

    def _execute_together(self, requests: list[Any]) -> None:
        first = requests[0]
        time_limit, soft_time_limit = first.time_limits
        calls: list[TraceCall] = [
            (r.type, r.id, r.request_dict, r.body, r.content_type, r.content_encoding) for r in requests
        ]
        result = self._controller.pool.apply_async(
            run_coalesced,
            args=(calls, bool(self._controller.app.use_fast_trace_task)),
            accept_callback=lambda pid, accepted: [r.on_accepted(pid, accepted) for r in requests],
            timeout_callback=lambda soft, timeout: self._on_timeout(requests, soft, timeout),
            callback=lambda results: self._on_results(requests, results),
            error_callback=lambda exc_info: self._on_failure(requests, exc_info),
            soft_timeout=soft_time_limit or first.task.soft_time_limit,
            timeout=time_limit or first.task.time_limit,
            correlation_id=first.id,
        )
        if result is not None:
            for request in requests:
                request._apply_result = ref(result)  # what a revoke with terminate looks up

    def _on_results(self, requests: Sequence[Any], results: Sequence[Any]) -> None:
        self._release(requests)
        for request, result in zip(requests, results, strict=True):
            request.on_success(result)

    def _on_failure(self, requests: Sequence[Any], exc_info: Any) -> None:
        self._release(requests)
        for request in requests:
            request.on_failure(exc_info)

    def _on_timeout(self, requests: Sequence[Any], soft: bool, timeout: float) -> None:
        if not soft:
            self._release(requests)
        for request in requests:
            request.on_timeout(soft, timeout)


def mergeable(request: Any) -> bool:
    """A first delivery of a batch message whose size is known and leaves room in a job for another."""
    if request.task_name != TASK_NAME or not settings.WORKER_MERGE_MESSAGES:
        return False
    if settings.PROCESS_MAX_ATTEMPTS < 2:  # a run together must never be a last attempt
        return False
    if request.eta or request.request_dict.get("retries") or request.delivery_info.get("redelivered"):
        return False
    return 0 < event_count(request) < settings.WORKER_JOB_EVENTS


def event_count(request: Any) -> int:
    """The message's events: counted where this process decoded its body, else from the publisher's
    header (0 when it has none: such a message runs alone). The header only sizes the job; the pool
    process decodes the events themselves."""
    if body_left_to_pool(request.message):
        count = request.request_dict.get(EVENTS_HEADER)
        return count if isinstance(count, int) and not isinstance(count, bool) and count > 0 else 0
    kwargs = request.kwargs
    events = kwargs.get("events") if isinstance(kwargs, dict) else None
    return len(events) if isinstance(events, list) else 0


# --- pool process --------------------------------------------------------------------------------------


@dataclass
class Member:
    """One message of a job as the pool process sees it."""

    task_id: str
    retries: int
    message: BatchMessage | None  # None: not a usable batch; it runs alone and is dead-lettered
    deliveries: int | None = None
    together: bool = False
    result: BatchOutcome | Exception | None = None


class CoalescedJob:
    def __init__(self, members: list[Member]) -> None:
        self._members = {member.task_id: member for member in members}
        counts = deliveries_started([(m.task_id, m.retries) for m in members])
        for member, count in zip(members, counts, strict=True):
            member.deliveries = count
        by_tenant: dict[str, list[Member]] = defaultdict(list)
        for member in members:
            if member.message is not None and member.retries == 0 and (member.deliveries or 1) == 1:
                by_tenant[member.message.tenant].append(member)
        self._by_tenant = {tenant: group for tenant, group in by_tenant.items() if len(group) > 1}
        for group in self._by_tenant.values():
            for member in group:
                member.together = True

    def member(self, task_id: str | None) -> Member | None:
        return self._members.get(task_id) if task_id else None

    def outcome(self, member: Member) -> BatchOutcome:
        """The member's share of its tenant's run together; the run happens at the first ask."""
        if member.result is None:
            assert member.message is not None  # only usable messages run together
            self._run(member.message.tenant)
        result = member.result
        if isinstance(result, Exception):
            raise result
        assert result is not None
        return result

    def _run(self, tenant: str) -> None:
        group = self._by_tenant[tenant]
        try:
            results = batch_process_together(
                messages=[m.message for m in group if m.message is not None], pipeline=default_pipeline()
            )
        except Exception as exc:
            logger.exception("%d messages of tenant %s could not be run together", len(group), tenant)
            results = [exc] * len(group)
        for member, result in zip(group, results, strict=True):
            member.result = result


_running: list[CoalescedJob] = []  # the job of this pool process, while it runs


def current_job() -> CoalescedJob | None:
    """The job the pool process is running now, if several messages came as one."""
    return _running[-1] if _running else None


def run_coalesced(calls: list[TraceCall], fast_trace: bool) -> list[Any]:
    """Pool process: run each message's task through Celery's tracer, in order, as one job.

    The bodies are decoded once here and handed to the tracer decoded. Returns each message's
    result as the tracer returns it, which the main process hands to that message's request.
    """
    trace: Callable[..., Any] = fast_trace_task if fast_trace else trace_task_ret
    ready: list[TraceCall] = []
    members: list[Member] = []
    for name, task_id, request, body, content_type, content_encoding in calls:
        try:
            payload = body
            if content_type:
                payload = loads_message(body, content_type, cast(str, content_encoding), accept=_accept())
            args, kwargs, embed = payload
        except Exception:
            # Left to the tracer, which reports it as it would for a message sent alone.
            ready.append((name, task_id, request, body, content_type, content_encoding))
            continue
        ready.append((name, task_id, request, (args, kwargs, embed), None, None))
        retries = int(request.get("retries") or 0)
        members.append(Member(task_id=task_id, retries=retries, message=_parsed(args, kwargs)))
    try:
        job: CoalescedJob | None = CoalescedJob(members)
    except Exception:
        # Nothing runs together: each message runs as if it had come alone.
        logger.exception("a job of %d messages could not be prepared; running each alone", len(calls))
        job = None
    results: list[Any] = []
    if job is not None:
        _running.append(job)
    try:
        for call in ready:
            try:
                results.append(trace(*call))
            except Exception:
                # The tracer handles a task's own failures; this is the tracer failing. Celery would
                # fail the message likewise; the other messages keep their results.
                logger.exception("the tracer failed on task %s", call[1])
                results.append((1, ExceptionInfo(), 0.0))
    finally:
        if job is not None:
            _running.pop()
    return results


def _parsed(args: Any, kwargs: Any) -> BatchMessage | None:
    try:
        return parse_message(args=args, kwargs=kwargs)
    except (MessageRejected, AttributeError, TypeError):
        return None


@cache
def _accept() -> set[str] | None:
    return prepare_accept_content(current_app.conf.accept_content)
