"""The loss ledger reconciles: pending = accepted - stored - dead_lettered is never below 0, even when
the shared state fails between a publish and its confirmation, and the report stays inside retention."""

from __future__ import annotations

import dataclasses
import json
import subprocess
import uuid
from collections.abc import Iterator
from datetime import timedelta
from pathlib import Path
from typing import Any

import pytest
import redis
from django.test import Client
from pytest_django.fixtures import Settings as SettingsWrapper

import events.ingestion
from cloudscale_project.publish_receipts import PUBLISHED_TTL_SECONDS
from cloudscale_project.state import state_redis
from cloudscale_project.timeutil import hour_floor, isoformat_z, utcnow
from events.dedup import RESERVATION_SECONDS, Claim, reserve_event_ids
from events.ledger import Commit, late_commits, ledger_record, ledger_window, retention_start
from events.publishing import publish_events
from events.tasks import process_batch
from ops.embedded_redis import start_embedded_redis
from tests.conftest import Actor, wait_until
from tests.events.pipeline_support import take_one_message
from tests.netutil import free_port

pytestmark = [pytest.mark.django_db, pytest.mark.core]

LOGIN = {"event_type": "login", "user_id": "u-7"}


class StateServer:
    """A Redis server of this test's own as the shared state, so it can fail while the broker lives."""

    def __init__(self, data_dir: Path) -> None:
        self.port = free_port()
        self.data_dir = data_dir
        self.process: subprocess.Popen[bytes] | None = None
        self.password = "state-test-password"

    @property
    def url(self) -> str:
        return f"redis://:{self.password}@127.0.0.1:{self.port}/1"

    def start(self) -> None:
        self.process = start_embedded_redis(
            port=self.port, data_dir=self.data_dir, password=self.password, fsync="always"
        )

    def stop(self) -> None:
        if self.process is not None and self.process.poll() is None:
            self.process.terminate()
            self.process.wait(timeout=10)


@pytest.fixture
def state_server(settings: SettingsWrapper, tmp_path: Path) -> Iterator[StateServer]:
    server = StateServer(tmp_path / "state-redis")
    server.start()
    settings.REDIS_URL = server.url
    state_redis.cache_clear()
    yield server
    server.stop()
    state_redis.cache_clear()


def post(client: Client, actor: Actor, body: Any) -> Any:
    return client.post("/api/events", data=json.dumps(body), content_type="application/json", **actor.headers)


def run_the_worker_on_the_queued_message() -> None:
    message = take_one_message()
    args, kwargs, _embed = message.payload
    process_batch(*args, **kwargs)  # the real task body, default pipeline and store


def totals(client: Client, actor: Actor) -> dict[str, int]:
    response = client.get("/api/ledger", **actor.headers)
    assert response.status_code == 200, response.content
    body = response.json()
    for row in [*body["results"], body["totals"]]:
        assert row["pending"] >= 0, body
        assert row["received"] == row["accepted"] + row["duplicate"] + row["rejected"] + row["rate_limited"]
    result: dict[str, int] = body["totals"]
    return result


def test_an_event_published_just_before_the_shared_state_fails_is_still_counted_as_accepted(
    client: Client, acme: Actor, state_server: StateServer, monkeypatch: pytest.MonkeyPatch
) -> None:
    def publish_then_lose_the_state(**kwargs: Any) -> None:
        publish_events(**kwargs)  # the real publish: the event is in the broker
        state_server.stop()  # ... and the shared state goes away before the confirmation

    monkeypatch.setattr(events.ingestion, "publish_events", publish_then_lose_the_state)
    event = {**LOGIN, "event_id": str(uuid.uuid4())}
    response = post(client, acme, event)
    assert response.status_code == 503 and response.json()["error"]["code"] == "broker_unavailable"
    monkeypatch.undo()
    assert late_commits.waiting() == 1

    state_server.start()  # same port, same append-only file
    wait_until(lambda: late_commits.waiting() == 0, timeout=20, message="the late commit to land")
    run_the_worker_on_the_queued_message()

    # The client gives up here: the hour must still balance, with the event accepted and stored.
    counts = totals(client, acme)
    assert (counts["accepted"], counts["stored"], counts["pending"]) == (1, 1, 0)

    # Its retry is a duplicate (the event is in the broker), not a second acceptance.
    retry = post(client, acme, event)
    assert retry.status_code == 202 and retry.json()["status"] == "duplicate"
    counts = totals(client, acme)
    assert (counts["received"], counts["accepted"], counts["duplicate"], counts["pending"]) == (2, 1, 1, 0)


def test_an_id_already_confirmed_by_another_request_is_counted_once(
    client: Client, acme: Actor, state_redis: redis.Redis
) -> None:
    """A late commit and the client's retry may both publish an event: it is accepted once."""
    from events.ledger import ledger_commit_all

    event_id = str(uuid.uuid4())
    commit = Commit(tenant="acme", received_at=utcnow(), published_ids=(event_id,), duplicate=0, rejected=0)
    ledger_commit_all([commit])
    ledger_commit_all([commit])
    counts = totals(client, acme)
    assert (counts["received"], counts["accepted"], counts["duplicate"]) == (2, 1, 1)
    assert state_redis.get(f"seen:acme:{event_id}") == b"1"


def test_a_group_is_counted_in_each_requests_own_hour(
    state_redis: redis.Redis, settings: SettingsWrapper
) -> None:
    """One commit of a group's requests: each is counted in its own ledger hour, an id confirmed by
    an earlier member is a duplicate of the later one, and each hour and id gets its TTL."""
    from events.ledger import ledger_commit_all

    now = hour_floor(utcnow())
    earlier = now - timedelta(hours=1)
    first, second, third = (str(uuid.uuid4()) for _ in range(3))
    ledger_commit_all(
        [
            Commit(tenant="acme", received_at=earlier, published_ids=(first,), duplicate=0, rejected=1),
            Commit(tenant="acme", received_at=now, published_ids=(second, third), duplicate=1, rejected=0),
            Commit(tenant="acme", received_at=now, published_ids=(second,), duplicate=0, rejected=0),
            Commit(tenant="acme", received_at=earlier, published_ids=(), duplicate=0, rejected=0),
        ]
    )

    def hour_counts(hour: Any) -> dict[str, int]:
        raw = state_redis.hgetall(f"ledger:acme:{hour.strftime('%Y-%m-%dT%H')}")
        return {
            (field.decode() if isinstance(field, bytes) else field): int(value)
            for field, value in raw.items()
        }

    assert hour_counts(earlier) == {"received": 2, "accepted": 1, "rejected": 1}
    assert hour_counts(now) == {"received": 4, "accepted": 2, "duplicate": 2}
    for hour in (earlier, now):
        ttl = state_redis.ttl(f"ledger:acme:{hour.strftime('%Y-%m-%dT%H')}")
        assert settings.EVENT_RETENTION_DAYS * 86400 < ttl <= (settings.EVENT_RETENTION_DAYS + 2) * 86400
    for event_id in (first, second, third):
        assert state_redis.get(f"seen:acme:{event_id}") == b"1"
        assert 0 < state_redis.ttl(f"seen:acme:{event_id}") <= settings.DEDUP_WINDOW_SECONDS


def test_the_report_never_reaches_before_the_retention_window(
    client: Client, acme: Actor, settings: SettingsWrapper
) -> None:
    now = utcnow()
    purged_hour = hour_floor(now - timedelta(days=settings.EVENT_RETENTION_DAYS, hours=6))
    kept_hour = hour_floor(now - timedelta(days=settings.EVENT_RETENTION_DAYS - 1))
    # Accepted, then stored, then purged by retention: only the API's count is left.
    ledger_record(tenant="acme", received_at=purged_hour, counts={"accepted": 3})
    ledger_record(tenant="acme", received_at=kept_hour, counts={"rejected": 1})

    response = client.get(
        "/api/ledger",
        {"since": isoformat_z(now - timedelta(days=settings.EVENT_RETENTION_DAYS + 1))},
        **acme.headers,
    )
    body = response.json()
    assert [row["hour"][:13] for row in body["results"]] == [isoformat_z(kept_hour)[:13]]
    assert body["totals"]["pending"] == 0


def test_the_window_starts_at_the_first_whole_hour_inside_retention(settings: SettingsWrapper) -> None:
    settings.EVENT_RETENTION_DAYS = 30
    now = utcnow().replace(minute=20)
    start = retention_start(now)
    assert start == hour_floor(now - timedelta(days=30)) + timedelta(hours=1)
    since, until = ledger_window(since=now - timedelta(days=400), until=None, now=now)
    assert (since, until) == (start, hour_floor(now) + timedelta(hours=1))


def test_ledger_hours_outlive_a_retention_longer_than_40_days(
    settings: SettingsWrapper, state_redis: redis.Redis
) -> None:
    settings.EVENT_RETENTION_DAYS = 90
    now = utcnow()
    ledger_record(tenant="acme", received_at=now, counts={"accepted": 1})
    ttl = state_redis.ttl(f"ledger:acme:{hour_floor(now).strftime('%Y-%m-%dT%H')}")
    assert ttl > 90 * 24 * 3600


def test_the_ledger_is_a_503_not_a_500_while_the_shared_state_is_down(
    client: Client, acme: Actor, shared_state_down: str
) -> None:
    response = client.get("/api/ledger", **acme.headers)
    assert response.status_code == 503, response.content
    assert response.json()["error"]["code"] == "store_unavailable"
    assert int(response["Retry-After"]) >= 1


def _uncertain_commit(tenant: str, event_ids: list[str]) -> Commit:
    reserve_event_ids(tenant=tenant, event_ids=event_ids)  # as the request did before its publish
    return Commit(
        tenant=tenant, received_at=utcnow(), published_ids=tuple(event_ids), duplicate=1, rejected=2
    )


def _hour_counts(tenant: str) -> dict[str, int]:
    client = state_redis()
    counts: dict[str, int] = {}
    for key in client.scan_iter(f"ledger:{tenant}:*"):
        for field, value in client.hgetall(key).items():
            name = field.decode() if isinstance(field, bytes) else field
            counts[name] = counts.get(name, 0) + int(value)
    return counts


def test_an_uncertain_publish_waits_for_the_broker_and_is_committed_when_it_landed() -> None:
    ids = [str(uuid.uuid4()) for _ in range(3)]
    answers: list[bool | Exception] = [redis.ConnectionError("the broker is away"), True]

    def landed() -> bool:
        answer = answers.pop(0)
        if isinstance(answer, Exception):
            raise answer
        return answer

    late_commits.add_uncertain([_uncertain_commit("acme", ids)], landed=landed)
    assert late_commits.flush() == 1, "kept while the broker cannot answer"
    assert _hour_counts("acme") == {}
    assert late_commits.flush() == 0
    assert _hour_counts("acme") == {"received": 6, "accepted": 3, "duplicate": 1, "rejected": 2}
    assert reserve_event_ids(tenant="acme", event_ids=ids) == [Claim.DUPLICATE] * 3


def test_an_uncertain_publish_that_did_not_land_is_released_and_counted_as_refused() -> None:
    ids = [str(uuid.uuid4()) for _ in range(3)]
    late_commits.add_uncertain([_uncertain_commit("acme", ids)], landed=lambda: False)
    assert late_commits.flush() == 0
    assert _hour_counts("acme") == {"received": 6, "rejected": 6}
    assert reserve_event_ids(tenant="acme", event_ids=ids) == [Claim.NEW] * 3, "released: a retry is new"


def test_an_uncertain_publish_leaves_reservations_alone_once_they_may_be_someone_elses(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    ids = [str(uuid.uuid4()) for _ in range(2)]
    late_commits.add_uncertain([_uncertain_commit("acme", ids)], landed=lambda: False)
    # The request is older than its reservation can be: a retry may hold the ids by now, so only
    # counting is left.
    commit = late_commits._waiting[0].commits[0]
    late_commits._waiting[0].commits = (
        dataclasses.replace(commit, received_at=commit.received_at - timedelta(seconds=RESERVATION_SECONDS)),
    )
    assert late_commits.flush() == 0
    assert reserve_event_ids(tenant="acme", event_ids=ids) == [Claim.IN_FLIGHT] * 2
    assert _hour_counts("acme") == {"received": 5, "rejected": 5}


def test_an_uncertain_publish_is_given_up_once_its_receipt_would_be_gone(
    caplog: pytest.LogCaptureFixture,
) -> None:
    def never_answers() -> bool:
        raise redis.ConnectionError("the broker is away")

    late_commits.add_uncertain([_uncertain_commit("acme", [str(uuid.uuid4())])], landed=never_answers)
    assert late_commits.flush() == 1
    late_commits._waiting[0].since -= PUBLISHED_TTL_SECONDS + 1
    assert late_commits.flush() == 0
    assert "gave up on the uncertain publish of 1 event(s) of acme" in caplog.text
    assert _hour_counts("acme") == {}
