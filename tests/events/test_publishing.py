"""Publishing a request's events: split to the broker's message size, and true receipts on a partial failure."""

from __future__ import annotations

import json
from collections.abc import Iterator
from datetime import timedelta
from typing import Any

import orjson
import pytest
from django.test import Client

import events.ingestion
from cloudscale_project.errors import BrokerUnavailable
from cloudscale_project.timeutil import utcnow
from events.ingestion import Receipts, RequestContext, ingest_events
from events.publishing import EVENTS_HEADER, GroupCommitter, publish_events, split_for_broker
from tests.conftest import Actor

pytestmark = [pytest.mark.django_db, pytest.mark.core]


def _event(i: int, pad: int = 900) -> dict[str, Any]:
    return {"event_id": f"e-{i}", "event_type": "page_view", "user_id": "u", "properties": {"url": "x" * pad}}


def test_it_keeps_everything_in_one_message_without_a_size_limit() -> None:
    events = [_event(i) for i in range(500)]
    assert split_for_broker(events, 0) == [events]


def test_it_splits_a_large_batch_under_the_service_bus_limit_in_order() -> None:
    events = [_event(i) for i in range(500)]
    chunks = split_for_broker(events, 256 * 1024)
    assert len(chunks) > 1
    assert [e for chunk in chunks for e in chunk] == events
    for chunk in chunks:
        encoded = len(orjson.dumps(chunk)) * 4 / 3 + 2048
        assert encoded <= 256 * 1024


def test_a_later_message_failing_rejects_only_its_events_and_they_can_be_retried(
    client: Client, acme: Actor, settings: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    settings.BROKER_MAX_MESSAGE_BYTES = 8 * 1024  # a few events per message
    calls = {"n": 0}

    def first_message_only(**kwargs: Any) -> None:
        calls["n"] += 1
        if calls["n"] > 1:
            raise BrokerUnavailable(5)
        publish_events(**kwargs)

    monkeypatch.setattr(events.ingestion, "publish_events", first_message_only)
    batch = [_event(i, pad=1500) for i in range(10)]
    response = client.post("/api/events/batch", data=json.dumps({"events": batch}),
                           content_type="application/json", **acme.headers)  # fmt: skip
    body = response.json()
    assert response.status_code == 202
    assert 0 < body["accepted"] < 10
    rejected = {r["index"]: r["errors"][0]["field"] for r in body["rejected"]}
    assert set(rejected.values()) == {"broker"}
    assert sorted([*rejected, *range(body["accepted"])]) == list(range(10))

    monkeypatch.undo()
    retry = client.post("/api/events/batch", data=json.dumps({"events": [batch[i] for i in rejected]}),
                        content_type="application/json", **acme.headers)  # fmt: skip
    assert retry.json()["accepted"] == len(rejected)
    assert retry.json()["duplicates"] == []


# --- group commit of small publishes -------------------------------------------------------------


def _queued_messages() -> list[dict[str, Any]]:
    """The kwargs of every process_batch message waiting in this run's queue (consumed)."""
    from django.conf import settings as django_settings
    from kombu import Queue

    from cloudscale_project.celery import app

    bodies: list[dict[str, Any]] = []
    with app.connection_for_read() as connection:
        queue = Queue(django_settings.QUEUE_NAME, channel=connection.default_channel)
        while (message := queue.get(no_ack=True)) is not None:
            _args, kwargs, _embed = message.decode()
            bodies.append(kwargs)
    return bodies


@pytest.fixture(autouse=True)
def _queue_left_empty() -> Iterator[None]:
    """Messages a test published and did not read would reach a later test's worker."""
    yield
    _queued_messages()


def _context(i: int, tenant: str) -> RequestContext:
    return RequestContext(
        tenant=tenant, received_at=utcnow(), ip="127.0.0.1", user_agent="tests", correlation_id=f"c-{i}"
    )


def _ingest_one(
    i: int, *, tenant: str = "acme", event_id: str | None = None, announced: bool = False
) -> Receipts:
    """One single-event request, as the API's view hands it to the ingestion service
    (`announced`: the caller has announced it to the group commit already)."""
    event = {**_event(i, pad=10), "event_id": event_id or f"e-{i}"}
    ingest = events.ingestion._ingest_events if announced else ingest_events
    return ingest(raw_events=[event], context=_context(i, tenant), body_bytes=200)


def _ingest_concurrently(
    count: int, *, tenant: str = "acme", event_ids: list[str] | None = None
) -> list[Receipts | BaseException]:
    """`count` single-event requests on as many threads, released together."""
    import threading

    outcomes: list[Receipts | BaseException] = [BaseException("never ran")] * count
    start = threading.Barrier(count)

    def one(i: int) -> None:
        start.wait()
        try:
            outcomes[i] = _ingest_one(i, tenant=tenant, event_id=event_ids[i] if event_ids else None)
        except BaseException as exc:
            outcomes[i] = exc

    threads = [threading.Thread(target=one, args=(i,)) for i in range(count)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=30)
    return outcomes


def _ledger_totals(tenant: str = "acme") -> dict[str, object]:
    from events.ledger import ledger_report

    now = utcnow()
    report = ledger_report(tenant=tenant, since=now - timedelta(hours=2), until=now + timedelta(hours=1))
    totals = report["totals"]
    assert isinstance(totals, dict)
    return totals


def _accepted(outcome: Receipts | BaseException) -> list[str]:
    assert isinstance(outcome, Receipts), outcome
    return outcome.event_ids


def test_concurrent_single_events_share_one_message_and_each_returns_once_it_is_published(
    settings: Any,
) -> None:
    settings.GROUP_COMMIT_LINGER_SECONDS = 0.2  # wide, so every thread joins the first group

    outcomes = _ingest_concurrently(20)

    assert [_accepted(outcome) for outcome in outcomes] == [[f"e-{i}"] for i in range(20)]
    messages = _queued_messages()
    assert len(messages) < 20  # a group commit, not a message per event
    assert sorted(e["event_id"] for m in messages for e in m["events"]) == sorted(f"e-{i}" for i in range(20))
    assert {m["tenant"] for m in messages} == {"acme"}
    totals = _ledger_totals()
    assert (totals["received"], totals["accepted"]) == (20, 20)


def test_a_group_reserves_and_confirms_its_requests_in_one_call_each(
    settings: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The group's leader makes the shared-state calls for every member: one reservation call and
    one commit call per message, not one of each per request."""
    from events.dedup import reserve_event_id_lists
    from events.ledger import ledger_commit_all

    settings.GROUP_COMMIT_LINGER_SECONDS = 0.2
    calls: dict[str, int] = {"reserve": 0, "commit": 0}

    def counted_reserve(**kwargs: Any) -> Any:
        calls["reserve"] += 1
        return reserve_event_id_lists(**kwargs)

    def counted_commit(commits: Any) -> None:
        calls["commit"] += 1
        ledger_commit_all(commits)

    monkeypatch.setattr(events.ingestion, "reserve_event_id_lists", counted_reserve)
    monkeypatch.setattr(events.ingestion, "ledger_commit_all", counted_commit)

    outcomes = _ingest_concurrently(20)

    assert all(isinstance(outcome, Receipts) for outcome in outcomes)
    messages = len(_queued_messages())
    assert messages < 20
    assert calls == {"reserve": messages, "commit": messages}


def test_one_id_in_two_requests_of_a_group_is_accepted_once_and_the_other_is_told_to_retry(
    settings: Any,
) -> None:
    settings.GROUP_COMMIT_LINGER_SECONDS = 0.2
    ids = ["same", "same", *[f"e-{i}" for i in range(2, 10)]]

    outcomes = _ingest_concurrently(10, event_ids=ids)

    first, second = outcomes[0], outcomes[1]
    refused = [o for o in (first, second) if isinstance(o, BrokerUnavailable)]
    answered = [o for o in (first, second) if isinstance(o, Receipts)]
    assert len(refused) == 1 and len(answered) == 1  # in flight for one of them, whichever was second
    assert answered[0].event_ids == ["same"]
    assert [_accepted(o) for o in outcomes[2:]] == [[f"e-{i}"] for i in range(2, 10)]
    stored = sorted(e["event_id"] for m in _queued_messages() for e in m["events"])
    assert stored == sorted(["same", *ids[2:]])
    totals = _ledger_totals()
    assert (totals["received"], totals["accepted"], totals["rejected"]) == (10, 9, 1)

    retry = _ingest_one(99, event_id="same")  # the refused request's retry
    assert (retry.event_ids, [event_id for _, event_id in retry.duplicates]) == ([], ["same"])


def test_a_duplicate_in_a_group_gets_its_receipt_and_the_others_are_published(settings: Any) -> None:
    settings.GROUP_COMMIT_LINGER_SECONDS = 0.2
    _ingest_one(0, event_id="seen-before")
    _queued_messages()  # drain

    outcomes = _ingest_concurrently(6, event_ids=["seen-before", *[f"e-{i}" for i in range(1, 6)]])

    first = outcomes[0]
    assert isinstance(first, Receipts)
    assert (first.event_ids, [event_id for _, event_id in first.duplicates]) == ([], ["seen-before"])
    assert [_accepted(o) for o in outcomes[1:]] == [[f"e-{i}"] for i in range(1, 6)]
    assert sorted(e["event_id"] for m in _queued_messages() for e in m["events"]) == [
        f"e-{i}" for i in range(1, 6)
    ]
    totals = _ledger_totals()
    assert (totals["received"], totals["accepted"], totals["duplicate"]) == (7, 6, 1)


def test_a_group_whose_commit_fails_is_answered_503_and_counted_late(
    settings: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    import redis

    from events.ledger import late_commits

    settings.GROUP_COMMIT_LINGER_SECONDS = 0.2

    def state_lost(commits: Any) -> None:
        raise redis.ConnectionError("gone after the publish")

    monkeypatch.setattr(events.ingestion, "ledger_commit_all", state_lost)
    outcomes = _ingest_concurrently(8)
    monkeypatch.undo()

    assert all(isinstance(outcome, BrokerUnavailable) for outcome in outcomes)
    assert len([e for m in _queued_messages() for e in m["events"]]) == 8  # in the broker all the same
    assert late_commits.flush() == 0  # the shared state is back: every kept commit lands
    totals = _ledger_totals()
    assert (totals["received"], totals["accepted"]) == (8, 8)


def test_a_group_never_holds_more_than_its_limit(settings: Any) -> None:
    settings.GROUP_COMMIT_LINGER_SECONDS = 0.2
    settings.GROUP_COMMIT_MAX_EVENTS = 8

    assert all(isinstance(outcome, Receipts) for outcome in _ingest_concurrently(20))

    messages = _queued_messages()
    assert max(len(m["events"]) for m in messages) <= 8
    assert sum(len(m["events"]) for m in messages) == 20


def test_every_member_of_a_group_hears_that_the_broker_refused_it(
    settings: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    settings.GROUP_COMMIT_LINGER_SECONDS = 0.2

    def broker_down(**kwargs: Any) -> None:
        raise BrokerUnavailable(5)

    monkeypatch.setattr(events.ingestion, "publish_events", broker_down)
    outcomes = _ingest_concurrently(10)
    monkeypatch.undo()

    assert all(isinstance(outcome, BrokerUnavailable) for outcome in outcomes)
    totals = _ledger_totals()
    assert (totals["received"], totals["rejected"], totals["accepted"]) == (10, 10, 0)
    # Their reservations were released: each retry is accepted, not refused or called a duplicate.
    assert [_ingest_one(i).event_ids for i in range(10)] == [[f"e-{i}"] for i in range(10)]
    assert sorted(e["event_id"] for m in _queued_messages() for e in m["events"]) == sorted(
        f"e-{i}" for i in range(10)
    )


def test_tenants_never_share_a_message(settings: Any) -> None:
    import threading

    settings.GROUP_COMMIT_LINGER_SECONDS = 0.2
    tenants = ["acme", "globex"] * 5
    threads = [
        threading.Thread(target=_ingest_one, args=(i,), kwargs={"tenant": tenant})
        for i, tenant in enumerate(tenants)
    ]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=30)

    owner = {f"e-{i}": tenant for i, tenant in enumerate(tenants)}
    messages = _queued_messages()
    assert sorted(e["event_id"] for m in messages for e in m["events"]) == sorted(owner)
    for message in messages:
        assert {owner[e["event_id"]] for e in message["events"]} == {message["tenant"]}


def test_a_lone_request_does_not_wait_for_the_linger(settings: Any) -> None:
    import time

    settings.GROUP_COMMIT_LINGER_SECONDS = 2.0  # the most a leader may wait; nothing to wait for here
    started = time.monotonic()

    _ingest_one(1)

    assert time.monotonic() - started < 1.0
    assert [e["event_id"] for m in _queued_messages() for e in m["events"]] == ["e-1"]


def test_a_leader_waits_for_an_announced_request_and_they_share_a_message(settings: Any) -> None:
    import threading

    settings.GROUP_COMMIT_LINGER_SECONDS = 5.0
    announced, leader_waiting = threading.Event(), threading.Event()

    def announced_request() -> None:
        with events.ingestion._groups.expecting("acme", 1):
            announced.set()
            leader_waiting.wait(5)
            _ingest_one(2, announced=True)

    sibling = threading.Thread(target=announced_request)
    sibling.start()
    assert announced.wait(5)
    leader = threading.Thread(target=_ingest_one, args=(1,))
    leader.start()
    leader.join(timeout=0.3)
    assert leader.is_alive()  # waiting for the announced request, not published alone
    leader_waiting.set()
    sibling.join(timeout=10)
    leader.join(timeout=10)

    messages = _queued_messages()
    assert len(messages) == 1
    assert sorted(e["event_id"] for e in messages[0]["events"]) == ["e-1", "e-2"]


def test_an_announced_request_that_never_publishes_stops_holding_the_leader(settings: Any) -> None:
    import threading
    import time

    settings.GROUP_COMMIT_LINGER_SECONDS = 5.0
    announced, finish = threading.Event(), threading.Event()

    def failing_request() -> None:  # e.g. an error before it reaches the group
        with events.ingestion._groups.expecting("acme", 1):
            announced.set()
            finish.wait(5)

    sibling = threading.Thread(target=failing_request)
    sibling.start()
    assert announced.wait(5)
    started = time.monotonic()
    leader = threading.Thread(target=_ingest_one, args=(1,))
    leader.start()
    finish.set()
    leader.join(timeout=10)
    sibling.join(timeout=10)

    assert time.monotonic() - started < 2.5  # released by the block's end, not by the 5 s linger
    assert [e["event_id"] for m in _queued_messages() for e in m["events"]] == ["e-1"]


def test_other_tenants_announcements_do_not_hold_a_leader(settings: Any) -> None:
    import threading
    import time

    settings.GROUP_COMMIT_LINGER_SECONDS = 5.0
    announced, finish = threading.Event(), threading.Event()

    def other_tenant() -> None:
        with events.ingestion._groups.expecting("globex", 1):
            announced.set()
            finish.wait(10)

    sibling = threading.Thread(target=other_tenant)
    sibling.start()
    assert announced.wait(5)
    started = time.monotonic()
    _ingest_one(1)
    elapsed = time.monotonic() - started
    finish.set()
    sibling.join(timeout=10)

    assert elapsed < 2.5


def test_a_request_announced_earlier_is_announced_once() -> None:
    groups: GroupCommitter[Any] = GroupCommitter(events.ingestion._flush)

    with groups.expecting("acme", 1):  # the rate limiter's announcement
        with groups.expecting("acme", 1):  # the ingestion service's, in the same request
            assert groups._pending == {"acme": 1}
        assert groups._pending == {"acme": 1}  # still on its way until the request's block ends

    assert groups._pending == {}


def test_announcing_another_tenant_ends_the_earlier_announcement() -> None:
    groups: GroupCommitter[Any] = GroupCommitter(events.ingestion._flush)

    with groups.expecting("acme", 1), groups.expecting("globex", 1):  # the key's tenant changed meanwhile
        assert groups._pending == {"globex": 1}  # no acme leader waits for a request that is not coming

    assert groups._pending == {}


def _announced_at_the_rate_limiter(monkeypatch: pytest.MonkeyPatch, tenant: str) -> list[int]:
    """For each rate-limited request from now on: how many of `tenant`'s requests were announced to
    the group commit when the rate limiter decided."""
    import events.middleware

    seen: list[int] = []
    real = events.middleware.check_rate_limits

    def recorded(**kwargs: Any) -> Any:
        seen.append(events.ingestion._groups._pending.get(tenant, 0))
        return real(**kwargs)

    monkeypatch.setattr(events.middleware, "check_rate_limits", recorded)
    return seen


def test_a_single_event_is_announced_before_its_rate_limits_once_its_key_is_cached(
    client: Client, acme: Actor, monkeypatch: pytest.MonkeyPatch
) -> None:
    seen = _announced_at_the_rate_limiter(monkeypatch, acme.slug)

    for i in range(3):
        body = json.dumps({"event_type": "click", "user_id": f"u-{i}"})
        response = client.post("/api/events", data=body, content_type="application/json", **acme.headers)
        assert response.status_code == 202, response.content

    assert seen == [0, 1, 1]  # the first request put the key in the process's cache
    assert events.ingestion._groups._pending == {}  # every announcement ended with its request


def test_a_batch_is_not_announced_before_it_is_parsed(
    client: Client, acme: Actor, monkeypatch: pytest.MonkeyPatch
) -> None:
    seen = _announced_at_the_rate_limiter(monkeypatch, acme.slug)

    for i in range(2):
        body = json.dumps({"events": [{"event_type": "click", "user_id": f"u-{i}"}]})
        response = client.post(
            "/api/events/batch", data=body, content_type="application/json", **acme.headers
        )
        assert response.status_code == 202, response.content

    assert seen == [0, 0]
    assert events.ingestion._groups._pending == {}


def test_flower_sees_a_summary_of_the_message_and_a_worker_its_event_count(settings: Any) -> None:
    from kombu import Queue

    from cloudscale_project.celery import app

    settings.GROUP_COMMIT_LINGER_SECONDS = 0  # one message, published directly
    publish_events(tenant="acme", events=[_event(i) for i in range(3)], correlation_id="c-9")

    with app.connection_for_read() as connection:
        message = Queue(settings.QUEUE_NAME, channel=connection.default_channel).get(no_ack=True)
    assert message is not None
    assert (
        message.headers["kwargsrepr"] == "{'tenant': 'acme', 'events': <3 event(s)>, 'correlation_id': 'c-9'}"
    )
    assert message.headers["argsrepr"] == "()"
    # What a worker's main process, which leaves big bodies undecoded, sizes its jobs by.
    assert message.headers[EVENTS_HEADER] == 3
    assert len(message.decode()[1]["events"]) == 3  # the events themselves are all there


# --- the gather window: waiting for requests not yet on their way -----------------------------------


@pytest.fixture
def fresh_groups(monkeypatch: pytest.MonkeyPatch) -> GroupCommitter[Any]:
    """A group committer that has seen no request yet (no tenant has overlapped), and remembers an
    overlap long enough that a slow test machine cannot outlast it."""
    groups: GroupCommitter[Any] = GroupCommitter(events.ingestion._flush)
    groups.OVERLAP_MEMORY_SECONDS = 30.0
    monkeypatch.setattr(events.ingestion, "_groups", groups)
    return groups


def _overlap(tenant: str, groups: GroupCommitter[Any] | None = None) -> None:
    """Two requests of `tenant` in flight at once, as when several clients send together."""
    import threading

    committer = groups or events.ingestion._groups
    first_in, second_done = threading.Event(), threading.Event()

    def first() -> None:
        with committer.expecting(tenant, 1):
            first_in.set()
            second_done.wait(5)

    thread = threading.Thread(target=first)
    thread.start()
    assert first_in.wait(5)
    with committer.expecting(tenant, 1):
        pass
    second_done.set()
    thread.join(timeout=5)


def _windows(settings: Any, *, gather: float, linger: float = 5.0, overlapped: bool = True) -> None:
    """The group commit's two waits (seconds), and acme's requests overlapped just now (or not)."""
    settings.GROUP_COMMIT_LINGER_SECONDS = linger
    settings.GROUP_COMMIT_GATHER_SECONDS = gather
    if overlapped:
        _overlap("acme")


def test_a_client_sending_one_request_at_a_time_never_waits_for_the_gather(
    settings: Any, fresh_groups: GroupCommitter[Any]
) -> None:
    import time

    _windows(settings, gather=2.0, overlapped=False)
    started = time.monotonic()

    for i in range(3):
        _ingest_one(i)

    assert time.monotonic() - started < 1.5  # not 3 x 2 s: its requests never overlap
    assert len(_queued_messages()) == 3


def test_once_requests_overlap_a_leader_gathers_a_newcomer_into_its_message(
    settings: Any, fresh_groups: GroupCommitter[Any]
) -> None:
    import threading
    import time

    _windows(settings, gather=2.0)
    started = time.monotonic()
    leader = threading.Thread(target=_ingest_one, args=(1,))
    leader.start()
    leader.join(timeout=0.3)
    assert leader.is_alive()  # nothing announced, yet it waits: the tenant has several clients

    _ingest_one(2)  # not on its way when the leader began
    leader.join(timeout=10)

    assert time.monotonic() - started < 4.0  # the gather window (2 s), not the linger (5 s)
    messages = _queued_messages()
    assert len(messages) == 1
    assert sorted(e["event_id"] for e in messages[0]["events"]) == ["e-1", "e-2"]


def test_the_gather_ends_with_its_window_and_only_the_overlapping_tenant_waits(
    settings: Any, fresh_groups: GroupCommitter[Any]
) -> None:
    import time

    _windows(settings, gather=0.5)

    started = time.monotonic()
    _ingest_one(1, tenant="globex")
    other_tenant = time.monotonic() - started
    started = time.monotonic()
    _ingest_one(2)
    gathered_alone = time.monotonic() - started

    assert other_tenant < 0.4
    assert 0.5 <= gathered_alone < 2.5
    assert len(_queued_messages()) == 2


def test_the_overlap_is_forgotten_after_a_while(
    settings: Any, fresh_groups: GroupCommitter[Any], monkeypatch: pytest.MonkeyPatch
) -> None:
    import time

    monkeypatch.setattr(fresh_groups, "OVERLAP_MEMORY_SECONDS", 0.1)
    _windows(settings, gather=2.0)
    time.sleep(0.2)

    started = time.monotonic()
    _ingest_one(1)

    assert time.monotonic() - started < 1.5


def test_the_gather_never_outlasts_the_linger(settings: Any, fresh_groups: GroupCommitter[Any]) -> None:
    import time

    _windows(settings, gather=10.0, linger=0.3)

    started = time.monotonic()
    _ingest_one(1)

    assert time.monotonic() - started < 3.0


@pytest.mark.parametrize(("request_threads", "all_inside"), [(3, True), (4, False)])
def test_a_group_gathers_only_while_a_request_thread_is_free_to_bring_another(
    settings: Any, fresh_groups: GroupCommitter[Any], request_threads: int, all_inside: bool
) -> None:
    import time

    fresh_groups.serve_with_threads(request_threads)
    _windows(settings, gather=2.0)

    started = time.monotonic()
    outcomes = _ingest_concurrently(3)
    elapsed = time.monotonic() - started

    assert [_accepted(outcome) for outcome in outcomes] == [["e-0"], ["e-1"], ["e-2"]]
    assert len(_queued_messages()) == 1
    assert fresh_groups.request_threads == request_threads
    if all_inside:
        assert elapsed < 1.5  # not the 2 s window: no thread was left to bring another request
    else:
        assert elapsed >= 2.0  # a fourth thread could still bring one


def test_a_group_that_a_newcomer_does_not_fit_is_flushed_without_waiting_out_the_gather(
    settings: Any,
) -> None:
    import threading
    import time

    settings.GROUP_COMMIT_MAX_EVENTS = 10
    flushed: list[tuple[list[str], float]] = []
    started = time.monotonic()

    def flush(tenant: str, members: list[str]) -> list[BaseException | None]:
        flushed.append((members, time.monotonic() - started))
        return [None] * len(members)

    groups: GroupCommitter[str] = GroupCommitter(flush)
    groups.OVERLAP_MEMORY_SECONDS = 30.0
    _windows(settings, gather=3.0, overlapped=False)
    _overlap("acme", groups)  # acme's groups gather from now on
    first = threading.Thread(
        target=groups.submit, kwargs={"tenant": "acme", "member": "a", "events": 6, "size": 0}
    )
    first.start()
    first.join(timeout=0.3)
    assert first.is_alive()  # gathering

    second = threading.Thread(
        target=groups.submit, kwargs={"tenant": "acme", "member": "b", "events": 6, "size": 0}
    )
    second.start()  # 12 events do not fit: a group of its own, and the first one is closed
    first.join(timeout=10)
    second.join(timeout=10)

    assert [members for members, _ in flushed] == [["a"], ["b"]]
    assert flushed[0][1] < 2.0  # closed, not held for the rest of its 3 s window
    assert 3.0 <= flushed[1][1] < 4.5  # the second one gathered for its own window (not the 5 s linger)
