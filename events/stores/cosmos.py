"""The Azure Cosmos DB event store (`CLOUDSCALE_EVENT_STORE=cosmos`).

Layout (docs/api.md, "Cosmos DB layout"): one container, partition key path `/pk`, item `id` = `event_id`,
`pk` = "<tenant slug>:<yyyy-MM of the event timestamp>", no per-item `ttl` (the container's default,
2,592,000 s, expires items 30 days after their write), session consistency.

Month index. A tenant query must not scan every partition, and a month partition is only known
from an event's timestamp, which can lie arbitrarily far in the past (clients back-date events;
only the future is clamped, to received_at + 23 h). So every write first upserts a small marker
item per (tenant, month) into the tenant's own index partition "<tenant>:months"; reads list that
one partition and then fan out over the months it names, newest first, each a single-partition
query. A marker is refreshed at most once an hour per process and lives a day longer than the
events (explicit `ttl`), so it never expires before the last event of its month.

Bounded reads. A tenant that back-dates events can own hundreds of month partitions, and a read
that visited each of them would spend the container's RU/s for every tenant. So a read visits at
most `read_max_months` (COSMOS_READ_MAX_MONTHS, 3) month partitions one by one, newest first, and
reaches the tenant's older months, if it has any, with one cross-partition query (filtered by
tenant, served by the index of each physical partition: its cost grows with the physical
partitions, not with the tenant's months).

Retries. The SDK's own throttling, connection and regional-failover retries are switched off,
so one policy here (docs/decisions.md, "Cosmos DB event store") decides: 429 waits exactly the
service's `x-ms-retry-after-ms`, other transient failures back off exponentially with jitter,
both within a bounded budget per call; then `StoreUnavailable(retry_after=...)` goes to the
pipeline, which retries the message or dead-letters it. Nothing is dropped silently.
"""

from __future__ import annotations

import contextvars
import logging
import os
import random
import threading
import time
import uuid
from collections import defaultdict
from collections.abc import Callable, Iterable, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from datetime import UTC, datetime, timedelta
from typing import TYPE_CHECKING, Any, TypeVar

from azure.core.exceptions import ClientAuthenticationError, ServiceRequestError, ServiceResponseError
from azure.cosmos import CosmosClient, PartitionKey, ThroughputProperties
from azure.cosmos.documents import ConnectionPolicy, RetryOptions
from azure.cosmos.exceptions import (
    CosmosClientTimeoutError,
    CosmosHttpResponseError,
    CosmosResourceExistsError,
)
from django.conf import settings
from django.core.exceptions import ImproperlyConfigured

from cloudscale_project.timeutil import hour_floor, isoformat_z, parse_iso
from events.enrichment import MAX_FUTURE_SKEW
from events.shape import normalised
from events.stores.base import (
    Event,
    EventPage,
    InvalidCursor,
    StoreUnavailable,
    decode_cursor,
    encode_cursor,
)

if TYPE_CHECKING:
    from azure.core.credentials import TokenCredential
    from azure.cosmos import ContainerProxy

logger = logging.getLogger(__name__)

T = TypeVar("T")

PARTITION_KEY_PATH = "/pk"
_MONTH_INDEX = "months"  # "<tenant>:months" can never be a month partition: those end in digits
_ONE_HOUR = timedelta(hours=1)
_RETRY_AFTER_HEADER = "x-ms-retry-after-ms"
# Worth retrying here: throttled (429), "retry with" (449), timeouts and server-side failures.
_RETRYABLE_STATUS = frozenset({408, 429, 449, 500, 502, 503, 504})
# Not transient in seconds but not the event's fault either (bad key or role, container not
# provisioned): surfaced at once as StoreUnavailable, so the message is retried and in the end
# dead-lettered for an operator to requeue after fixing the configuration.
_CONFIGURATION_STATUS = frozenset({401, 403, 404})

# The container's indexing: every field but the free-form ones, plus the composite index that
# `ORDER BY c.timestamp DESC, c.event_id DESC` needs on a real account.
INDEXING_POLICY: dict[str, Any] = {
    "indexingMode": "consistent",
    "automatic": True,
    "includedPaths": [{"path": "/*"}],
    "excludedPaths": [{"path": "/properties/*"}, {"path": "/user_agent/?"}, {"path": '/"_etag"/?'}],
    "compositeIndexes": [
        [{"path": "/timestamp", "order": "descending"}, {"path": "/event_id", "order": "descending"}]
    ],
}


class _ContextPool(ThreadPoolExecutor):
    """Runs each call in a copy of the submitter's context (contextvars), so the SDK's spans join the
    caller's trace and the correlation id stays set in the pool's threads."""

    def submit(self, fn: Callable[..., T], /, *args: Any, **kwargs: Any) -> Future[T]:
        return super().submit(contextvars.copy_context().run, fn, *args, **kwargs)


class PartialWrite(StoreUnavailable):
    """write_many gave up part-way. Of its events, `stored_ids` were newly stored by this call and
    `existing_ids` were found already stored; the rest may or may not be.

    A retry sees the new ones as already stored (409), so whoever counts stored events should
    count `stored_ids` now; and neither set needs a dead letter if the retries run out.
    """

    def __init__(
        self,
        message: str,
        *,
        retry_after: float | None,
        stored_ids: Iterable[str],
        existing_ids: Iterable[str] = (),
    ) -> None:
        super().__init__(message, retry_after=retry_after)
        self.stored_ids = frozenset(stored_ids)
        self.existing_ids = frozenset(existing_ids)


def month_of(value: datetime) -> str:
    # Four-digit years always (strftime's %Y does not pad before 1000), so months sort as text.
    utc = value.astimezone(UTC)
    return f"{utc.year:04d}-{utc.month:02d}"


def partition_key(tenant: str, timestamp: datetime) -> str:
    return f"{tenant}:{month_of(timestamp)}"


def _index_key(tenant: str) -> str:
    return f"{tenant}:{_MONTH_INDEX}"


def _as_item(event: Event, *, write_id: str) -> dict[str, Any]:
    """The stored item: the enriched event with normalised values (the ORM store's rules), so
    both stores read back the same event and ISO strings sort as times."""
    event = normalised(event)
    return {
        "id": event["event_id"],
        "pk": partition_key(event["tenant"], parse_iso(event["timestamp"])),
        **event,
        # Which write_many call stored it: tells "our own earlier attempt landed" from a duplicate.
        "write_id": write_id,
    }


def _as_event(item: dict[str, Any]) -> Event:
    return normalised(item)


def _retry_after_seconds(exc: BaseException) -> float | None:
    headers = getattr(exc, "headers", None) or {}
    raw = headers.get(_RETRY_AFTER_HEADER)
    try:
        return max(0.0, float(raw) / 1000.0) if raw is not None else None
    except ValueError:
        return None


def _describe(exc: BaseException) -> str:
    status = getattr(exc, "status_code", None)
    first_line = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
    return f"{status} {first_line}"[:200] if status else f"{type(exc).__name__}: {first_line}"[:200]


class _Budget:
    """The wait one store call may spend on retries, shared by its threads; once any operation
    gives up, the others stop too (the caller retries the whole call anyway)."""

    def __init__(self, seconds: float) -> None:
        self._deadline = time.monotonic() + seconds
        self._given_up = threading.Event()

    def allows(self, wait: float) -> bool:
        return not self._given_up.is_set() and time.monotonic() + wait <= self._deadline

    def give_up(self) -> None:
        self._given_up.set()

    @property
    def given_up(self) -> bool:
        return self._given_up.is_set()


class _Abandoned(Exception):
    """An operation skipped because another one of the same call already gave up."""


class CosmosEventStore:
    name = "cosmos"

    # Concurrent item writes per write_many. The SDK's HTTP transport pools 10 connections per
    # host; more threads would only queue on that pool.
    WRITE_CONCURRENCY = 8
    # One operation is tried at most this often within one store call...
    MAX_ATTEMPTS = 8
    # ...and all its retries together wait at most this long, before the pipeline takes over with
    # its own (longer, message-level) backoff. Well under the task's 120 s soft time limit.
    RETRY_BUDGET_SECONDS = 15.0
    # Reads answer an HTTP client that is waiting: give up sooner and let it retry (503 + Retry-After).
    READ_RETRY_BUDGET_SECONDS = 5.0
    # Backoff of transient failures that come without a retry-after hint (503, timeouts, resets).
    BACKOFF_BASE_SECONDS = 0.1
    BACKOFF_MAX_SECONDS = 5.0
    # A month marker is re-upserted (its TTL restarted) at most this often per process, and lives
    # the event retention plus this margin, so it outlives every event of its month.
    MONTH_MARKER_REFRESH_SECONDS = 3600
    MONTH_MARKER_TTL_MARGIN_SECONDS = 24 * 3600
    # Connect and socket timeouts of one HTTP request.
    CONNECTION_TIMEOUT_SECONDS = 5
    READ_TIMEOUT_SECONDS = 30

    def __init__(
        self,
        *,
        endpoint: str,
        credential: str | TokenCredential,
        database: str,
        container: str,
        verify_tls: bool = True,
        retention_seconds: int = 30 * 24 * 3600,
        read_max_months: int = 3,
    ) -> None:
        self.endpoint = endpoint
        self.database_name = database
        self.container_name = container
        self.retention_seconds = retention_seconds
        self.read_max_months = read_max_months
        self._credential = credential
        self._verify_tls = verify_tls
        self._lock = threading.Lock()
        self._client: CosmosClient | None = None
        self._client_pid = 0
        self._marked: dict[tuple[str, str], float] = {}  # (tenant, month) -> monotonic time of upsert

    @classmethod
    def from_settings(cls) -> CosmosEventStore:
        """No I/O here: the client connects on first use, so a Cosmos outage at start-up is a
        retryable StoreUnavailable inside a task, not a crash at import."""
        if not settings.COSMOS_ENDPOINT:
            raise ImproperlyConfigured("COSMOS_ENDPOINT is required when CLOUDSCALE_EVENT_STORE=cosmos")
        credential: str | TokenCredential
        if settings.COSMOS_KEY:
            credential = settings.COSMOS_KEY
        else:
            from azure.identity import DefaultAzureCredential

            credential = DefaultAzureCredential()  # managed identity, workload identity, az login
        return cls(
            endpoint=settings.COSMOS_ENDPOINT,
            credential=credential,
            database=settings.COSMOS_DATABASE,
            container=settings.COSMOS_CONTAINER,
            verify_tls=settings.COSMOS_VERIFY_TLS,
            retention_seconds=settings.EVENT_RETENTION_DAYS * 24 * 3600,
            read_max_months=settings.COSMOS_READ_MAX_MONTHS,
        )

    # --- client ---------------------------------------------------------------------------------

    def _cosmos_client(self) -> CosmosClient:
        """One client per process: it is thread-safe, but its sockets must not cross a fork
        (Celery prefork children inherit the parent's objects)."""
        with self._lock:
            if self._client is None or self._client_pid != os.getpid():
                self._client = self._new_client()
                self._client_pid = os.getpid()
                self._marked.clear()
            return self._client

    def _new_client(self) -> CosmosClient:
        policy = ConnectionPolicy()
        # No SDK-side throttling retries: our policy honours x-ms-retry-after-ms within its budget.
        policy.RetryOptions = RetryOptions(max_retry_attempt_count=0, max_wait_time_in_seconds=0)
        # No endpoint discovery: requests go to COSMOS_ENDPOINT only, and the SDK does not add its
        # own regional-failover retries of 503s and timeouts on top of ours.
        policy.EnableEndpointDiscovery = False
        if not self._verify_tls:
            logger.warning("Cosmos DB TLS certificate verification is off (COSMOS_VERIFY_TLS=false)")
            import urllib3

            urllib3.disable_warnings(urllib3.exceptions.InsecureRequestWarning)
        return CosmosClient(
            self.endpoint,
            credential=self._credential,
            consistency_level="Session",
            connection_policy=policy,
            connection_verify=self._verify_tls,
            retry_total=0,  # no connection-level retries in the transport either
            retry_connect=0,
            retry_read=0,
            connection_timeout=self.CONNECTION_TIMEOUT_SECONDS,
            read_timeout=self.READ_TIMEOUT_SECONDS,
            user_agent_suffix="cloudscale",
        )

    def _container(self) -> ContainerProxy:
        return (
            self._cosmos_client()
            .get_database_client(self.database_name)
            .get_container_client(self.container_name)
        )

    # --- retries --------------------------------------------------------------------------------

    def _backoff(self, attempt: int) -> float:
        ceiling = min(self.BACKOFF_MAX_SECONDS, self.BACKOFF_BASE_SECONDS * 2 ** (attempt - 1))
        return random.uniform(ceiling / 2, ceiling)  # noqa: S311 (jitter, not crypto)

    def _with_retries(self, operation: str, call: Callable[[], T], budget: _Budget) -> T:
        """Run `call`; retry transient failures within `budget`; else raise StoreUnavailable."""
        attempt = 0
        while True:
            if budget.given_up:
                raise _Abandoned(operation)
            attempt += 1
            error: Exception
            try:
                return call()
            except (CosmosHttpResponseError, ClientAuthenticationError) as exc:
                status = exc.status_code or 0
                if isinstance(exc, ClientAuthenticationError) or status in _CONFIGURATION_STATUS:
                    budget.give_up()
                    raise StoreUnavailable(f"cosmos {operation}: {_describe(exc)}") from exc
                if status not in _RETRYABLE_STATUS:
                    raise  # a bad request is a bug or a poison event, not an outage
                error, hint = exc, _retry_after_seconds(exc)
            except (ServiceRequestError, ServiceResponseError, CosmosClientTimeoutError) as exc:
                error, hint = exc, None
            wait = hint if hint is not None else self._backoff(attempt)
            if attempt >= self.MAX_ATTEMPTS or not budget.allows(wait):
                budget.give_up()
                logger.warning("cosmos %s failed after %d attempts: %s", operation, attempt, _describe(error))
                raise StoreUnavailable(
                    f"cosmos {operation} failed after {attempt} attempts: {_describe(error)}",
                    retry_after=wait,
                ) from error
            logger.info("cosmos %s: %s, retrying in %.3f s", operation, _describe(error), wait)
            time.sleep(wait)

    def _connect(self, budget: _Budget) -> ContainerProxy:
        # Creating the client reads the account over the network: retried like any request.
        return self._with_retries("connect", self._container, budget)

    # --- writes ---------------------------------------------------------------------------------

    def write_many(self, events: Sequence[Event]) -> set[str]:
        """create_item per event, concurrently; 201 = newly stored, 409 = already stored.

        Grouped by partition: each (tenant, month) marker is upserted before the month's items,
        so a reader never misses a month that holds events. No transactional batch: one
        conflicting id would abort the whole batch, and create-or-409 already is idempotent.
        """
        if not events:
            return set()
        budget = _Budget(self.RETRY_BUDGET_SECONDS)
        container = self._connect(budget)
        write_id = uuid.uuid4().hex
        by_partition: dict[str, list[dict[str, Any]]] = defaultdict(list)
        for event in events:
            item = _as_item(event, write_id=write_id)
            by_partition[item["pk"]].append(item)

        new_ids: set[str] = set()
        existing_ids: set[str] = set()
        failure: StoreUnavailable | None = None
        with _ContextPool(max_workers=self.WRITE_CONCURRENCY, thread_name_prefix="cosmos") as pool:
            markers = [
                pool.submit(self._mark_month, container, pk.split(":", 1)[0], pk.split(":", 1)[1], budget)
                for pk in by_partition
            ]
            failure = self._first_failure(markers)
            if failure is None:
                creates: list[tuple[str, Future[bool]]] = [
                    (item["id"], pool.submit(self._create, container, item, budget))
                    for items in by_partition.values()
                    for item in items
                ]
                failure = self._first_failure(future for _, future in creates)
                for event_id, future in creates:
                    if future.exception() is None:
                        (new_ids if future.result() else existing_ids).add(event_id)
        if failure is not None:
            logger.warning(
                "cosmos write_many gave up on %d events: %d newly stored, %d already stored, rest unknown",
                len(events),
                len(new_ids),
                len(existing_ids - new_ids),
            )
            raise PartialWrite(
                str(failure),
                retry_after=failure.retry_after,
                stored_ids=new_ids,
                existing_ids=existing_ids - new_ids,
            ) from failure
        return new_ids

    @staticmethod
    def _first_failure(futures: Iterable[Future[Any]]) -> StoreUnavailable | None:
        """Wait for all; the StoreUnavailable to report (longest retry-after), re-raising anything else."""
        failures: list[StoreUnavailable] = []
        unexpected: BaseException | None = None
        for future in list(futures):
            exc = future.exception()
            if exc is None or isinstance(exc, _Abandoned):
                continue
            if isinstance(exc, StoreUnavailable):
                failures.append(exc)
            elif unexpected is None:
                unexpected = exc
        if unexpected is not None:
            raise unexpected
        return max(failures, key=lambda f: f.retry_after or 0.0) if failures else None

    def _mark_month(self, container: ContainerProxy, tenant: str, month: str, budget: _Budget) -> None:
        key = (tenant, month)
        marked_at = self._marked.get(key)
        if marked_at is not None and time.monotonic() - marked_at < self.MONTH_MARKER_REFRESH_SECONDS:
            return
        marker = {
            "id": month,
            "pk": _index_key(tenant),
            "tenant": tenant,
            "month": month,
            "ttl": self.retention_seconds + self.MONTH_MARKER_TTL_MARGIN_SECONDS,
        }
        self._with_retries("mark month", lambda: container.upsert_item(body=marker, no_response=True), budget)
        self._marked[key] = time.monotonic()

    def _create(self, container: ContainerProxy, item: dict[str, Any], budget: _Budget) -> bool:
        attempts = 0

        def create() -> bool:
            nonlocal attempts
            attempts += 1
            try:
                container.create_item(body=item, no_response=True)
            except CosmosResourceExistsError:
                # After a failed attempt (timeout, 5xx) our own write may have landed after all.
                return attempts > 1 and self._written_by(container, item)
            return True

        return self._with_retries("create", create, budget)

    @staticmethod
    def _written_by(container: ContainerProxy, item: dict[str, Any]) -> bool:
        found = list(
            container.query_items(
                "SELECT VALUE c.write_id FROM c WHERE c.pk = @pk AND c.id = @id",
                parameters=[{"name": "@pk", "value": item["pk"]}, {"name": "@id", "value": item["id"]}],
                partition_key=item["pk"],
            )
        )
        return bool(found) and found[0] == item["write_id"]

    # --- reads ----------------------------------------------------------------------------------

    def _months(self, container: ContainerProxy, tenant: str, budget: _Budget) -> list[str]:
        """The tenant's month partitions, newest first (one small single-partition query)."""
        pk = _index_key(tenant)
        months = self._query_partition(
            container, pk, "SELECT VALUE c.month FROM c WHERE c.pk = @pk", [], budget, operation="list months"
        )
        return sorted({str(month) for month in months}, reverse=True)

    def _query_partition(
        self,
        container: ContainerProxy,
        pk: str,
        sql: str,
        parameters: list[dict[str, Any]],
        budget: _Budget,
        *,
        operation: str,
    ) -> list[Any]:
        params = [{"name": "@pk", "value": pk}, *parameters]
        return self._with_retries(
            operation,
            lambda: list(container.query_items(sql, parameters=params, partition_key=pk)),
            budget,
        )

    def _query_older_months(
        self,
        container: ContainerProxy,
        *,
        tenant: str,
        read_months: Sequence[str],
        where: str,
        parameters: list[dict[str, Any]],
        budget: _Budget,
        select: str = "*",
        order_by: str = "",
        operation: str,
    ) -> list[Any]:
        """One cross-partition query over the tenant's months other than `read_months` (those were
        read one by one). Only event items: month markers have no `event_id`."""
        sql = (
            f"SELECT {select} FROM c WHERE c.tenant = @tenant AND IS_DEFINED(c.event_id) "  # noqa: S608
            f"AND NOT ARRAY_CONTAINS(@read_pks, c.pk) AND {where}{order_by}"
        )
        params: list[dict[str, Any]] = [
            {"name": "@tenant", "value": tenant},
            {"name": "@read_pks", "value": [f"{tenant}:{month}" for month in read_months]},
            *parameters,
        ]
        return self._with_retries(
            operation,
            lambda: list(container.query_items(sql, parameters=params, enable_cross_partition_query=True)),
            budget,
        )

    def get(self, *, tenant: str, event_id: str) -> Event | None:
        """Looked up month by month, newest first (the id alone does not say its partition), in at
        most `read_max_months` partitions; the tenant's older months, if any, in one query."""
        budget = _Budget(self.READ_RETRY_BUDGET_SECONDS)
        container = self._connect(budget)
        months = self._months(container, tenant, budget)
        near = months[: self.read_max_months]
        for month in near:
            found = self._query_partition(
                container,
                f"{tenant}:{month}",
                "SELECT * FROM c WHERE c.pk = @pk AND c.id = @id",
                [{"name": "@id", "value": event_id}],
                budget,
                operation="get",
            )
            if found:
                return _as_event(found[0])
        if len(months) > len(near):
            found = self._query_older_months(
                container,
                tenant=tenant,
                read_months=near,
                where="c.event_id = @id",
                parameters=[{"name": "@id", "value": event_id}],
                budget=budget,
                operation="get (older months)",
            )
            if found:
                return _as_event(found[0])
        return None

    def query(
        self,
        *,
        tenant: str,
        event_type: str | None = None,
        user_id: str | None = None,
        since: datetime | None = None,
        until: datetime | None = None,
        limit: int = 100,
        cursor: str | None = None,
    ) -> EventPage:
        """Single-partition queries over the months in range, newest month first, merged (at most
        `read_max_months` of them; older months in range in one cross-partition query).

        Months partition time, so reading them in order is already a merge; the cursor is the
        last (timestamp, event_id) returned, which names its month and the point within it.
        """
        clauses = ["c.pk = @pk"]
        parameters: list[dict[str, Any]] = []
        newest_month = month_of(until - timedelta(microseconds=1)) if until else None
        oldest_month = month_of(since) if since else None
        if event_type:
            clauses.append("c.event_type = @event_type")
            parameters.append({"name": "@event_type", "value": event_type})
        if user_id:
            clauses.append("c.user_id = @user_id")
            parameters.append({"name": "@user_id", "value": user_id})
        if since:
            clauses.append("c.timestamp >= @since")
            parameters.append({"name": "@since", "value": isoformat_z(since)})
        if until:
            clauses.append("c.timestamp < @until")
            parameters.append({"name": "@until", "value": isoformat_z(until)})
        if cursor:
            after_time, after_id = decode_cursor(cursor)
            try:
                after = parse_iso(after_time)
            except ValueError:
                raise InvalidCursor("cursor is not one this API returned") from None
            clauses.append(
                "(c.timestamp < @after_time OR (c.timestamp = @after_time AND c.event_id < @after_id))"
            )
            parameters += [
                {"name": "@after_time", "value": isoformat_z(after)},
                {"name": "@after_id", "value": after_id},
            ]
            newest_month = min(filter(None, (newest_month, month_of(after))))
        # Only fixed clauses are joined into the text; every value travels as a parameter.
        sql = (
            f"SELECT TOP @top * FROM c WHERE {' AND '.join(clauses)} "  # noqa: S608
            "ORDER BY c.timestamp DESC, c.event_id DESC"
        )

        budget = _Budget(self.READ_RETRY_BUDGET_SECONDS)
        container = self._connect(budget)
        months = [
            month
            for month in self._months(container, tenant, budget)
            if (newest_month is None or month <= newest_month)
            and (oldest_month is None or month >= oldest_month)
        ]
        items: list[dict[str, Any]] = []
        near = months[: self.read_max_months]
        for month in near:
            wanted = limit + 1 - len(items)
            if wanted <= 0:
                break
            items += self._query_partition(
                container,
                f"{tenant}:{month}",
                sql,
                [*parameters, {"name": "@top", "value": wanted}],
                budget,
                operation="query",
            )
        if len(months) > len(near) and limit + 1 > len(items):
            # The older months in range together: their items all sort after the near months' ones.
            items += self._query_older_months(
                container,
                tenant=tenant,
                read_months=near,
                where=" AND ".join(clauses[1:]) or "true",
                parameters=parameters,
                budget=budget,
                select=f"TOP {limit + 1 - len(items)} *",
                order_by=" ORDER BY c.timestamp DESC, c.event_id DESC",
                operation="query (older months)",
            )
        results = [_as_event(item) for item in items[:limit]]
        next_cursor = None
        if len(items) > limit and results:
            last = results[-1]
            next_cursor = encode_cursor(last["timestamp"], last["event_id"])
        return EventPage(results=results, next_cursor=next_cursor)

    def count_stored_by_hour(self, *, tenant: str, since: datetime, until: datetime) -> dict[datetime, int]:
        """Events stored per hour of received_at, in [since, until).

        Which partitions can hold them? An event's month comes from its timestamp, which is at
        most MAX_FUTURE_SKEW (23 h) after its received_at (later ones are clamped to received_at)
        but may be any time before it. So: every month in the tenant's index up to the month of
        `until + 23 h`. One COUNT per month over the whole range skips months with nothing in it;
        the others get one COUNT per hour (all single-partition, run concurrently).
        """
        budget = _Budget(self.READ_RETRY_BUDGET_SECONDS)
        container = self._connect(budget)
        latest = month_of(until + MAX_FUTURE_SKEW)
        candidates = [m for m in self._months(container, tenant, budget) if m <= latest]
        # The newest months one by one; all older ones together (None), cross-partition.
        months: list[str | None] = list(candidates[: self.read_max_months])
        if len(candidates) > len(months):
            months.append(None)
        hours: list[tuple[datetime, datetime, datetime]] = []  # (bucket, from, to)
        hour = hour_floor(since)
        while hour < until:
            hours.append((hour, max(hour, since), min(hour + _ONE_HOUR, until)))
            hour += _ONE_HOUR
        if not months or not hours:
            return {}

        near = [m for m in months if m is not None]

        def count(month: str | None, start: datetime, end: datetime) -> int:
            window = [
                {"name": "@from", "value": isoformat_z(start)},
                {"name": "@to", "value": isoformat_z(end)},
            ]
            if month is None:
                values = self._query_older_months(
                    container,
                    tenant=tenant,
                    read_months=near,
                    where="c.received_at >= @from AND c.received_at < @to",
                    parameters=window,
                    budget=budget,
                    select="VALUE COUNT(1)",
                    operation="count (older months)",
                )
            else:
                values = self._query_partition(
                    container,
                    f"{tenant}:{month}",
                    "SELECT VALUE COUNT(1) FROM c "
                    "WHERE c.pk = @pk AND c.received_at >= @from AND c.received_at < @to",
                    window,
                    budget,
                    operation="count",
                )
            return sum(values)  # a partition may answer in pages, each with a partial count

        counts: dict[datetime, int] = defaultdict(int)
        with _ContextPool(max_workers=self.WRITE_CONCURRENCY, thread_name_prefix="cosmos") as pool:
            totals = {m: pool.submit(count, m, since, until) for m in months}
            self._raise_first(totals.values())
            busy = [m for m, total in totals.items() if total.result() > 0]
            if len(hours) == 1:
                for m in busy:
                    counts[hours[0][0]] += totals[m].result()
            else:
                per_hour = [
                    (bucket, pool.submit(count, m, start, end)) for m in busy for bucket, start, end in hours
                ]
                self._raise_first(future for _, future in per_hour)
                for bucket, future in per_hour:
                    counts[bucket] += future.result()
        return {bucket: n for bucket, n in counts.items() if n}

    def _raise_first(self, futures: Iterable[Future[Any]]) -> None:
        failure = self._first_failure(futures)
        if failure is not None:
            raise failure

    def purge_expired(self, *, older_than: datetime) -> int:
        """Nothing to do: the container's default TTL expires items (docs/api.md, "Retention")."""
        return 0

    def ping(self) -> None:
        """Read the container's properties once (no retries: /readyz must answer quickly)."""
        try:
            self._container().read()
        except (CosmosHttpResponseError, ClientAuthenticationError, ServiceRequestError,
                ServiceResponseError, CosmosClientTimeoutError) as exc:  # fmt: skip
            raise StoreUnavailable(f"cosmos: {_describe(exc)}") from exc

    # --- provisioning -----------------------------------------------------------------------------

    def provision(self, *, autoscale_max_ru: int) -> list[str]:
        """Create the database and container if missing, align TTL and indexing, set autoscale.

        Idempotent; returns one line per step for the management command to print.
        """
        client = self._cosmos_client()
        report: list[str] = []
        database = client.create_database_if_not_exists(id=self.database_name)
        report.append(f"database {self.database_name}: ok")
        pk = PartitionKey(path=PARTITION_KEY_PATH, kind="Hash")
        try:
            database.create_container(
                id=self.container_name,
                partition_key=pk,
                default_ttl=self.retention_seconds,
                indexing_policy=INDEXING_POLICY,
                offer_throughput=ThroughputProperties(auto_scale_max_throughput=autoscale_max_ru),
            )
            report.append(f"container {self.container_name}: created (partition key {PARTITION_KEY_PATH})")
        except CosmosResourceExistsError:
            report.append(f"container {self.container_name}: exists")
        except CosmosHttpResponseError as exc:
            if exc.status_code != 400:
                raise
            # Serverless accounts refuse provisioned throughput on create.
            database.create_container(
                id=self.container_name,
                partition_key=pk,
                default_ttl=self.retention_seconds,
                indexing_policy=INDEXING_POLICY,
            )
            report.append(
                f"container {self.container_name}: created without throughput "
                f"(the account refused it: {_describe(exc)})"
            )

        container = database.get_container_client(self.container_name)
        properties = container.read()
        paths = properties.get("partitionKey", {}).get("paths", [])
        if paths != [PARTITION_KEY_PATH]:
            raise ImproperlyConfigured(
                f"container {self.container_name} is partitioned by {paths}, the event store needs "
                f"[{PARTITION_KEY_PATH!r}]: a partition key cannot change, use a new container"
            )
        composite = properties.get("indexingPolicy", {}).get("compositeIndexes", [])
        if properties.get("defaultTtl") != self.retention_seconds or _normalised(composite) != _normalised(
            INDEXING_POLICY["compositeIndexes"]
        ):
            database.replace_container(
                container,
                partition_key=pk,
                default_ttl=self.retention_seconds,
                indexing_policy=INDEXING_POLICY,
            )
            report.append(f"container {self.container_name}: default TTL and indexing policy updated")
        report.append(f"default TTL: {self.retention_seconds} s")
        report.append(self._provision_throughput(container, autoscale_max_ru))
        return report

    @staticmethod
    def _provision_throughput(container: ContainerProxy, autoscale_max_ru: int) -> str:
        try:
            current = container.get_throughput()
        except CosmosHttpResponseError as exc:
            return (
                "throughput: skipped, this account or emulator does not support provisioned throughput "
                f"(serverless, shared database throughput, or a test server): {_describe(exc)}"
            )
        if current.auto_scale_max_throughput == autoscale_max_ru:
            return f"throughput: autoscale max {autoscale_max_ru} RU/s"
        if not current.auto_scale_max_throughput:
            return (
                f"throughput: the container has manual throughput {current.offer_throughput} RU/s; "
                "switching to autoscale is a migration (az cosmosdb sql container throughput migrate "
                f"-t autoscale), then run this command again for max {autoscale_max_ru} RU/s"
            )
        container.replace_throughput(ThroughputProperties(auto_scale_max_throughput=autoscale_max_ru))
        return f"throughput: autoscale max {current.auto_scale_max_throughput} -> {autoscale_max_ru} RU/s"


def _normalised(composite: list[list[dict[str, str]]]) -> list[list[tuple[str, str]]]:
    return [[(index["path"], index.get("order", "ascending")) for index in group] for group in composite]
