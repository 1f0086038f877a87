"""Ingestion service: request body → receipts (accepted / duplicate / rejected) → one durable publish.

Views only parse the HTTP request and render; every decision about an event is made here, once,
and each decision is counted in the ledger and the metrics.
"""

from __future__ import annotations

import contextlib
import functools
import logging
import time
from collections import Counter
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

import orjson
from django.conf import settings

from cloudscale_project.errors import (
    BrokerUnavailable,
    ErrorDetail,
    MalformedJson,
    PayloadTooLarge,
    UnsupportedMediaType,
)
from cloudscale_project.metrics import EVENTS_INGESTED, INGESTION_DURATION
from cloudscale_project.state import STATE_ERRORS
from events.dedup import RESERVATION_SECONDS, Claim, release_event_ids, reserve_event_id_lists
from events.enrichment import enrich_event
from events.ledger import Commit, late_commits, ledger_commit_all, ledger_record
from events.publishing import (
    GroupCommitter,
    PublishUncertain,
    events_size,
    few_enough_to_group,
    groupable,
    publish_events,
    publish_landed,
    split_for_broker,
)
from events.schemas import metric_event_type, validate_event

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class RequestContext:
    tenant: str
    received_at: datetime
    ip: str
    user_agent: str
    correlation_id: str
    started: float = field(default_factory=time.perf_counter)


@dataclass
class Receipts:
    """One receipt per event of the request, by index: every index is in exactly one list."""

    accepted: list[tuple[int, str]] = field(default_factory=list)
    duplicates: list[tuple[int, str]] = field(default_factory=list)
    rejected: list[tuple[int, list[ErrorDetail]]] = field(default_factory=list)

    @property
    def event_ids(self) -> list[str]:
        return [event_id for _, event_id in self.accepted]


def body_too_large(size: int) -> PayloadTooLarge:
    return PayloadTooLarge(
        f"request body is {size} bytes; the limit is {settings.MAX_BODY_BYTES} (1 MiB)",
        [ErrorDetail("body", "larger than 1 MiB")],
    )


def parse_json_body(*, body: bytes, content_type: str) -> Any:
    """The request body as JSON, or a 415 / 413 / 400 (docs/api.md, "Errors")."""
    media_type = content_type.split(";", 1)[0].strip().lower()
    if media_type != "application/json":
        raise UnsupportedMediaType(content_type)
    if len(body) > settings.MAX_BODY_BYTES:
        raise body_too_large(len(body))
    try:
        return orjson.loads(body)
    except orjson.JSONDecodeError as exc:
        raise MalformedJson(f"request body is not valid JSON: {exc}") from None


def _oversized(raw: Any) -> bool:
    try:
        return len(orjson.dumps(raw)) > settings.MAX_EVENT_BYTES
    except orjson.JSONEncodeError:
        # Nested past orjson's 255 levels: far deeper than any valid event, so validation refuses
        # it with the field that is too deep.
        return False


def ingest_events(*, raw_events: list[Any], context: RequestContext, body_bytes: int) -> Receipts:
    """Validate, enrich, dedup and publish a request's events; raise BrokerUnavailable on a failed publish."""
    with _groups.expecting(context.tenant, len(raw_events)):
        return _ingest_events(raw_events=raw_events, context=context, body_bytes=body_bytes)


def _ingest_events(*, raw_events: list[Any], context: RequestContext, body_bytes: int) -> Receipts:
    receipts = Receipts()
    enriched: list[tuple[int, dict[str, Any]]] = []
    # A body under 32 KiB cannot hold an oversized event: skip re-serialising on the common path.
    check_sizes = body_bytes > settings.MAX_EVENT_BYTES
    for index, raw in enumerate(raw_events):
        if check_sizes and _oversized(raw):
            receipts.rejected.append((index, [ErrorDetail("body", "event is larger than 32 KiB")]))
            continue
        valid, errors = validate_event(raw)
        if valid is None:
            receipts.rejected.append((index, errors))
            continue
        enriched.append(
            (
                index,
                enrich_event(
                    valid,
                    tenant=context.tenant,
                    received_at=context.received_at,
                    ip=context.ip,
                    user_agent=context.user_agent,
                    correlation_id=context.correlation_id,
                ),
            )
        )

    return _ingest_enriched(enriched=enriched, receipts=receipts, context=context, total=len(raw_events))


def ingest_enriched(
    *, enriched: list[tuple[int, dict[str, Any]]], receipts: Receipts, context: RequestContext, total: int
) -> Receipts:
    """Dedup, publish and count a request's validated, enriched events (by request index).

    `receipts` already holds the request's rejected events; `total` is how many events the request
    carried. The native endpoints and the SDK-compatible ones (compat/) share this path, so both give
    the same receipts, ledger counts and 503s.
    """
    with _groups.expecting(context.tenant, len(enriched)):
        return _ingest_enriched(enriched=enriched, receipts=receipts, context=context, total=total)


@dataclass(eq=False)
class _Request:
    """One request's share of a flush: its events, and what the flush decided for them."""

    context: RequestContext
    receipts: Receipts
    enriched: list[tuple[int, dict[str, Any]]]
    total: int
    published: list[dict[str, Any]] = field(default_factory=list)


def _ingest_enriched(
    *, enriched: list[tuple[int, dict[str, Any]]], receipts: Receipts, context: RequestContext, total: int
) -> Receipts:
    request = _Request(context=context, receipts=receipts, enriched=enriched, total=total)
    size = events_size([event for _, event in enriched]) if few_enough_to_group(len(enriched)) else 0
    if groupable(events=len(enriched), size=size):
        # Concurrent small requests of the tenant share one reservation call, one message and one
        # commit call (`_flush`): each still gets its own receipts, 503 and ledger counts.
        _groups.submit(tenant=context.tenant, member=request, events=len(enriched), size=size)
    else:
        outcome = _flush(context.tenant, [request])[0]
        if outcome is not None:
            raise outcome
    _count(context, receipts, request.published)
    return receipts


def _flush(tenant: str, requests: list[_Request]) -> list[BaseException | None]:
    """Reserve, publish, confirm and count the events of one or more requests of `tenant`.

    The outcome of each request, by position: None when it is answered (its receipts filled and
    true), else the BrokerUnavailable to answer it with. Every request's ids are reserved in one
    call, its accepted events published in one message with the others' (a lone request may need
    several, `_publish_in_messages`), and all requests confirmed and counted in one call.
    """
    outcomes: list[BaseException | None] = [None] * len(requests)
    try:
        claims = reserve_event_id_lists(
            tenant=tenant, id_lists=[[event["event_id"] for _, event in r.enriched] for r in requests]
        )
    except STATE_ERRORS as exc:
        for position, request in enumerate(requests):
            _count_failed(request.context, request.total)
            outcomes[position] = _unavailable(exc)
        return outcomes

    live: dict[int, _Request] = {}  # by position in `requests`
    unreserve: list[str] = []
    for position, (request, request_claims) in enumerate(zip(requests, claims, strict=True)):
        for (index, event), claim in zip(request.enriched, request_claims, strict=True):
            if claim is Claim.NEW:
                request.receipts.accepted.append((index, event["event_id"]))
                request.published.append(event)
            elif claim is Claim.DUPLICATE:
                request.receipts.duplicates.append((index, event["event_id"]))
        if Claim.IN_FLIGHT in request_claims:
            # An event of this request is being published by another one, whose publish may still
            # fail: neither "accepted" nor "duplicate" would be true yet. Refuse the request; its
            # retry is answered once that publish is confirmed or its reservation has expired.
            unreserve += request.receipts.event_ids
            request.published = []
            _count_failed(request.context, request.total)
            outcomes[position] = _unavailable()
        else:
            live[position] = request
    if unreserve:
        _release(tenant, unreserve)

    try:
        _publish(tenant, list(live.values()))
    except BrokerUnavailable:
        for position in live:
            outcomes[position] = _unavailable()
        return outcomes
    _commit(tenant, live, outcomes)
    return outcomes


def _unavailable(cause: BaseException | None = None) -> BrokerUnavailable:
    """A request's 503 (one instance per request: threads must not raise one object together)."""
    error = BrokerUnavailable(settings.BROKER_RETRY_AFTER_SECONDS)
    error.__cause__ = cause
    return error


def _publish(tenant: str, requests: list[_Request]) -> None:
    """Publish the accepted events of `requests`; BrokerUnavailable when none could be.

    A lone request goes through `_publish_in_messages` (a large one may need several messages).
    A group fits one message by construction: if it fails, every member's ids are released and
    every member is refused.
    """
    if len(requests) == 1:
        request = requests[0]
        request.published = _publish_in_messages(
            request.context, request.receipts, request.published, total=request.total
        )
        return
    events = [event for request in requests for event in request.published]
    if not events:
        return
    try:
        publish_events(tenant=tenant, events=events, correlation_id=requests[0].context.correlation_id)
    except PublishUncertain as exc:
        _keep_uncertain(exc, _commits(tenant, requests))
        raise
    except BrokerUnavailable:
        _release(tenant, [event["event_id"] for event in events])
        for request in requests:
            _count_failed(request.context, request.total)
        raise


def _publish_in_messages(
    context: RequestContext, receipts: Receipts, events: list[dict[str, Any]], *, total: int
) -> list[dict[str, Any]]:
    """Publish the accepted events, in as many messages as the broker's size limit needs.

    If the first message fails, nothing is in the broker: 503 for the whole request (when the
    broker may have it after all, the request waits for its receipt: `_keep_uncertain`). If a later one
    fails (only possible when a request is split), the events already published stay accepted and
    the rest get a `rejected` receipt saying so: each event's receipt stays true.
    """
    published: list[dict[str, Any]] = []
    chunks = split_for_broker(events, settings.BROKER_MAX_MESSAGE_BYTES)
    for position, chunk in enumerate(chunks):
        try:
            publish_events(tenant=context.tenant, events=chunk, correlation_id=context.correlation_id)
        except PublishUncertain as exc:
            # Only a transport with a size limit splits a request (Service Bus), and only Redis
            # writes publish receipts, so an uncertain publish is always the request's first.
            later = [event for rest in chunks[1:] for event in rest]
            _release(context.tenant, [event["event_id"] for event in later])
            uncertain = Commit(
                tenant=context.tenant,
                received_at=context.received_at,
                published_ids=tuple(event["event_id"] for event in chunk),
                duplicate=len(receipts.duplicates),
                rejected=len(receipts.rejected) + len(later),
            )
            _keep_uncertain(exc, [uncertain])
            raise
        except BrokerUnavailable:
            unpublished = [event for later in chunks[position:] for event in later]
            _release(context.tenant, [event["event_id"] for event in unpublished])
            if not published:
                _count_failed(context, total)
                raise
            _reject_unpublished(receipts, {event["event_id"] for event in unpublished})
            break
        published.extend(chunk)
    return published


def _reject_unpublished(receipts: Receipts, unpublished: set[str]) -> None:
    detail = [ErrorDetail("broker", "not published: the broker became unavailable; retry this event")]
    kept = []
    for index, event_id in receipts.accepted:
        if event_id in unpublished:
            receipts.rejected.append((index, detail))
        else:
            kept.append((index, event_id))
    receipts.accepted = kept
    receipts.rejected.sort(key=lambda item: item[0])


def _release(tenant: str, event_ids: list[str]) -> None:
    """Forget reservations that will not be published. When Redis is away too (on the embedded
    stack it is the broker) they stay until they expire; until then a retry is refused as in
    flight, never called a duplicate, and the request still gets its 503 rather than a 500."""
    try:
        release_event_ids(tenant=tenant, event_ids=event_ids)
    except STATE_ERRORS:
        logger.warning(
            "could not release %d reserved event id(s) of %s; they expire in %d s",
            len(event_ids), tenant, RESERVATION_SECONDS,
        )  # fmt: skip


def _count_failed(context: RequestContext, n: int) -> None:
    """A 503: every event of the request was refused, and the client was told so."""
    try:
        ledger_record(tenant=context.tenant, received_at=context.received_at, counts={"rejected": n})
    except STATE_ERRORS:
        logger.warning("ledger unavailable while refusing %d event(s) of %s", n, context.tenant)


def _commit(tenant: str, live: dict[int, _Request], outcomes: list[BaseException | None]) -> None:
    """Confirm the published ids and count the requests in the ledger, in one atomic step.

    If Redis went away right after the publish (on the embedded stack it is the broker), the
    events are in the broker but neither confirmed nor counted. The commits are kept and written
    late (`events.ledger.LateCommits`), so the hour still counts them as accepted when they are
    stored; the requests are answered 503 and their retries are refused as in flight until the
    late commits land, then answered `duplicate`. Found by the fault suite (tests/faults/).
    """
    commits = _commits(tenant, list(live.values()))
    try:
        ledger_commit_all(commits)
    except STATE_ERRORS as exc:
        for position, commit in zip(live, commits, strict=True):
            late_commits.add(commit)
            outcomes[position] = _unavailable(exc)
        logger.error(
            "published %d event(s) of %s but could not confirm or count them (kept to write late); "
            "answering 503: %s",
            sum(len(commit.published_ids) for commit in commits), tenant, exc,
        )  # fmt: skip


def _commits(tenant: str, requests: list[_Request]) -> list[Commit]:
    """What each request's commit writes: its published ids, its duplicates and its rejected events."""
    return [
        Commit(
            tenant=tenant,
            received_at=request.context.received_at,
            published_ids=tuple(event["event_id"] for event in request.published),
            duplicate=len(request.receipts.duplicates),
            rejected=len(request.receipts.rejected),
        )
        for request in requests
    ]


def _keep_uncertain(failure: PublishUncertain, commits: list[Commit]) -> None:
    """A publish that failed but may be in the broker (its reply was lost): keep the ids reserved
    and the requests uncounted until the broker's receipt tells (`LateCommits.add_uncertain`).
    Releasing them now would let a retry publish a second copy of events that may already be
    stored, and counting them as refused could be false."""
    late_commits.add_uncertain(commits, landed=functools.partial(publish_landed, failure.task_id))


def _count(context: RequestContext, receipts: Receipts, published: list[dict[str, Any]]) -> None:
    by_type = Counter(metric_event_type(event) for event in published)
    for event_type, n in by_type.items():
        EVENTS_INGESTED.labels(event_type=event_type, tenant_id=context.tenant).inc(n)
    elapsed = time.perf_counter() - context.started
    for event_type in by_type:
        INGESTION_DURATION.labels(event_type=event_type).observe(elapsed)
    logger.info(
        "ingested %d, duplicate %d, rejected %d for %s",
        len(receipts.accepted), len(receipts.duplicates), len(receipts.rejected), context.tenant,
        extra={"tenant": context.tenant, "event_type": ",".join(sorted(by_type)) or None},
    )  # fmt: skip


# One per process: concurrent small requests of a tenant are flushed together.
_groups: GroupCommitter[_Request] = GroupCommitter(_flush)


def expecting_publish(tenant: str, events: int) -> contextlib.AbstractContextManager[None]:
    """Announce a request of `tenant` with `events` events before its own checks and parsing: a
    group of the tenant flushing meanwhile waits for it, within the linger (`ingest_events`
    announces it again, which then adds nothing)."""
    return _groups.expecting(tenant, events)


def serve_with_threads(threads: int) -> None:
    """This process answers requests on `threads` threads (gunicorn's worker says so at start):
    a group holding all of them has nothing more to wait for."""
    _groups.serve_with_threads(threads)
