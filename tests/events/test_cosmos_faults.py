"""Cosmos DB under faults: a proxy in front of the test server answers some requests with 429
(and x-ms-retry-after-ms), 503 or a lost response. The adapter waits as told, retries within its
budget, then hands the pipeline a StoreUnavailable; every event ends up stored exactly once."""

from __future__ import annotations

import time
from collections import Counter
from collections.abc import Iterable
from datetime import timedelta
from typing import Any, cast

import pytest

from events.models import DeadLetter
from events.pipeline import BatchMessage, Pipeline, RetryBatch, batch_process
from events.stores.base import Event, StoreUnavailable
from events.stores.cosmos import CosmosEventStore, PartialWrite
from tests.cosmos_fixtures import CosmosServer, Fault, FaultProxy, Seen, free_port
from tests.events.test_store_contract import NOV, OCT, ids, make_event

pytestmark = [pytest.mark.faults, pytest.mark.filterwarnings("ignore:Unverified HTTPS request")]


def stored_ids(server: CosmosServer, store: CosmosEventStore) -> list[str]:
    """Every event item in the container (month markers aside), read with a plain client."""
    container = server.plain_container(store.container_name)
    # A VALUE query yields the ids themselves; the SDK types every query's items as dicts.
    return sorted(
        cast(
            Iterable[str],
            container.query_items(
                "SELECT VALUE c.id FROM c WHERE IS_DEFINED(c.event_id)", enable_cross_partition_query=True
            ),
        )
    )


def batch(n: int) -> list[Event]:
    return [make_event(timestamp=(NOV if i % 2 else OCT) - timedelta(minutes=i)) for i in range(n)]


def test_it_waits_as_told_on_429_and_retries_503_storing_every_event_once(
    cosmos_server: CosmosServer, fault_proxy: FaultProxy
) -> None:
    store = cosmos_server.store(endpoint=fault_proxy.endpoint)
    events = batch(12)
    throttled, unavailable = set(ids(events[0::3])), set(ids(events[1::3]))
    attempts: Counter[str] = Counter()

    def decide(seen: Seen) -> Fault | None:
        if seen.kind != "create" or seen.item_id is None:
            return None
        attempts[seen.item_id] += 1
        if seen.item_id in throttled and attempts[seen.item_id] == 1:
            return Fault(429, retry_after_ms=250)
        if seen.item_id in unavailable and attempts[seen.item_id] <= 2:
            return Fault(503)
        return None

    fault_proxy.decide = decide

    assert store.write_many(events) == set(ids(events))

    assert stored_ids(cosmos_server, store) == sorted(ids(events))
    creates = fault_proxy.requests("create")
    # Exactly our retries and no hidden ones from the SDK: one extra per 429, two per 503 pair.
    assert len(creates) == len(events) + len(throttled) + 2 * len(unavailable)
    for event_id in throttled:
        first, second = (seen for seen in creates if seen.item_id == event_id)
        assert first.status == 429 and second.status == 201
        assert second.at - first.at >= 0.25, "the retry came before x-ms-retry-after-ms"
    assert {seen.item_id for seen in creates if seen.status == 503} == unavailable


def test_it_gives_up_within_its_budget_and_a_retry_stores_the_rest_once(
    cosmos_server: CosmosServer, fault_proxy: FaultProxy
) -> None:
    store = cosmos_server.store(endpoint=fault_proxy.endpoint)
    # The budget counts from the call's start (connect, month marker, first creates): 3 s with a
    # hint of 1 s leaves room for a second try even when that start is slow on a loaded machine
    # (CI once spent more than 0.7 s of a 1 s budget before the first 429 came back).
    store.RETRY_BUDGET_SECONDS = 3.0
    events = batch(10)
    stuck = set(ids(events[:2]))
    fault_proxy.decide = lambda seen: (
        Fault(429, retry_after_ms=1000) if seen.kind == "create" and seen.item_id in stuck else None
    )

    started = time.monotonic()
    with pytest.raises(PartialWrite) as raised:
        store.write_many(events)

    assert time.monotonic() - started < 5
    assert isinstance(raised.value, StoreUnavailable)
    assert raised.value.retry_after == pytest.approx(1.0)  # the service's hint, for the pipeline
    assert not raised.value.stored_ids & stuck
    tries = Counter(seen.item_id for seen in fault_proxy.requests("create") if seen.item_id in stuck)
    # Retried as told, and bounded by the budget (3 s / 1 s): not by luck, not forever.
    assert max(tries.values()) >= 2 and all(n <= 4 for n in tries.values()), tries

    fault_proxy.decide = lambda seen: None
    second = store.write_many(events)

    assert second.isdisjoint(raised.value.stored_ids)
    assert second | raised.value.stored_ids == set(ids(events))
    assert stored_ids(cosmos_server, store) == sorted(ids(events))


def test_it_counts_its_own_write_whose_answer_was_lost(
    cosmos_server: CosmosServer, fault_proxy: FaultProxy
) -> None:
    store = cosmos_server.store(endpoint=fault_proxy.endpoint)
    earlier, lost, plain = make_event(), make_event(), make_event()
    store.write_many([earlier])
    answered: set[str | None] = set()

    def decide(seen: Seen) -> Fault | None:
        # The server stores the item, the client gets a timeout instead of the 201.
        if seen.kind != "create" or seen.item_id not in {earlier["event_id"], lost["event_id"]}:
            return None
        if seen.item_id in answered:
            return None
        answered.add(seen.item_id)
        return Fault(408, when="after")

    fault_proxy.decide = decide

    # `lost` landed on the first attempt: new. `earlier` was stored by another call: not new.
    assert store.write_many([earlier, lost, plain]) == {lost["event_id"], plain["event_id"]}
    assert stored_ids(cosmos_server, store) == sorted(ids([earlier, lost, plain]))


def test_it_retries_throttled_reads(cosmos_server: CosmosServer, fault_proxy: FaultProxy) -> None:
    store = cosmos_server.store(endpoint=fault_proxy.endpoint)
    events = batch(4)
    store.write_many(events)
    throttled: list[Seen] = []

    def decide(seen: Seen) -> Fault | None:
        if seen.kind == "query" and len(throttled) < 3:
            throttled.append(seen)
            return Fault(429, retry_after_ms=50) if len(throttled) % 2 else Fault(503)
        return None

    fault_proxy.decide = decide

    page = store.query(tenant="acme", limit=10)

    assert sorted(ids(page.results)) == sorted(ids(events))
    assert len(throttled) == 3
    assert store.get(tenant="acme", event_id=events[0]["event_id"]) is not None


def test_it_reports_an_unreachable_account_as_unavailable(cosmos_server: CosmosServer) -> None:
    store = cosmos_server.store(endpoint=f"https://127.0.0.1:{free_port()}", container="events")
    store.RETRY_BUDGET_SECONDS = store.READ_RETRY_BUDGET_SECONDS = 0.5

    started = time.monotonic()
    with pytest.raises(StoreUnavailable):
        store.write_many([make_event()])
    with pytest.raises(StoreUnavailable):
        store.ping()
    with pytest.raises(StoreUnavailable):
        store.query(tenant="acme")

    assert time.monotonic() - started < 5


@pytest.mark.django_db
def test_it_lets_the_pipeline_retry_then_dead_letter_a_batch_cosmos_keeps_refusing(
    cosmos_server: CosmosServer, fault_proxy: FaultProxy, settings: Any
) -> None:
    store = cosmos_server.store(endpoint=fault_proxy.endpoint)
    store.RETRY_BUDGET_SECONDS = 0.3
    fault_proxy.decide = lambda seen: Fault(429, retry_after_ms=100) if seen.kind == "create" else None
    events = batch(3)
    message = BatchMessage(tenant="acme", events=events, correlation_id="c-cosmos-faults")
    pipeline = Pipeline(store=store)

    with pytest.raises(RetryBatch) as retry:
        batch_process(message=message, attempt=1, pipeline=pipeline)
    assert retry.value.countdown >= 0.1  # never sooner than the store's own retry-after

    outcome = batch_process(message=message, attempt=settings.PROCESS_MAX_ATTEMPTS, pipeline=pipeline)

    assert outcome.dead_lettered == len(events)
    letters = DeadLetter.objects.filter(tenant="acme", reason=DeadLetter.Reason.MAX_RETRIES_EXCEEDED)
    # event_id is nullable in the model: key=str sorts a None too (and it would still fail the comparison).
    assert sorted(letters.values_list("event_id", flat=True), key=str) == sorted(ids(events))
    assert stored_ids(cosmos_server, store) == []  # refused, not lost: each is a dead letter
