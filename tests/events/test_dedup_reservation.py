"""A request's dedup reservation is one server-side call, and its claims are what they always were.

`events.dedup.reserve_event_ids` sends one Lua script per request instead of two commands per id;
these tests pin the claim of every kind of id (new, in flight, confirmed, an older process's
confirmed value, repeated within the call), the keys it leaves behind, that the whole call is one
round trip, and that it survives the server losing its script cache (as after a restart).
"""

from __future__ import annotations

import uuid
from typing import Any

import pytest
import redis
from django.conf import settings as django_settings
from pytest_django.fixtures import Settings as SettingsWrapper

import events.dedup
from cloudscale_project.state import STATE_ERRORS
from events.dedup import RESERVATION_SECONDS, Claim, confirm_event_ids, reserve_event_ids

pytestmark = [pytest.mark.core]


class CountingConnection(redis.connection.Connection):
    """A real connection that counts the replies it reads: one per command the server answered."""

    replies = 0

    def read_response(self, *args: Any, **kwargs: Any) -> Any:
        CountingConnection.replies += 1
        return super().read_response(*args, **kwargs)


def new_ids(n: int) -> list[str]:
    return [str(uuid.uuid4()) for _ in range(n)]


def test_it_claims_every_kind_of_id_as_before(state_redis: redis.Redis) -> None:
    new, in_flight, confirmed, legacy, other_value = new_ids(5)
    assert reserve_event_ids(tenant="acme", event_ids=[in_flight, confirmed]) == [Claim.NEW, Claim.NEW]
    confirm_event_ids(tenant="acme", event_ids=[confirmed])
    state_redis.set(f"seen:acme:{legacy}", b"1", ex=3600)  # written by an older API process
    state_redis.set(f"seen:acme:{other_value}", b"published", ex=3600)  # anything but "reserved"

    ids = [new, in_flight, confirmed, legacy, other_value, new, in_flight, confirmed, legacy, new]
    claims = reserve_event_ids(tenant="acme", event_ids=ids)

    assert claims == [
        Claim.NEW,
        Claim.IN_FLIGHT,
        Claim.DUPLICATE,
        Claim.DUPLICATE,
        Claim.DUPLICATE,
        Claim.DUPLICATE,  # repeated within the call after a NEW
        Claim.IN_FLIGHT,  # repeated, but in flight elsewhere: still in flight
        Claim.DUPLICATE,
        Claim.DUPLICATE,
        Claim.DUPLICATE,
    ]
    # Only the new id was written: a reservation with the short TTL; the others are untouched.
    assert state_redis.get(f"seen:acme:{new}") == b"reserved"
    assert 0 < state_redis.ttl(f"seen:acme:{new}") <= RESERVATION_SECONDS
    assert state_redis.get(f"seen:acme:{confirmed}") == b"1"
    assert state_redis.ttl(f"seen:acme:{confirmed}") > RESERVATION_SECONDS
    assert state_redis.get(f"seen:acme:{legacy}") == b"1"
    assert state_redis.get(f"seen:acme:{other_value}") == b"published"
    # Ids are per tenant: the same ids are new for another one.
    assert reserve_event_ids(tenant="globex", event_ids=[in_flight, confirmed]) == [Claim.NEW, Claim.NEW]


def test_confirming_sets_the_dedup_window(state_redis: redis.Redis, settings: SettingsWrapper) -> None:
    settings.DEDUP_WINDOW_SECONDS = 7200
    event_id = new_ids(1)[0]
    reserve_event_ids(tenant="acme", event_ids=[event_id])
    confirm_event_ids(tenant="acme", event_ids=[event_id])
    assert state_redis.get(f"seen:acme:{event_id}") == b"1"
    assert 7200 - 10 <= state_redis.ttl(f"seen:acme:{event_id}") <= 7200


def test_a_whole_batch_is_reserved_in_one_round_trip(
    monkeypatch: pytest.MonkeyPatch, state_redis: redis.Redis
) -> None:
    client = redis.Redis.from_url(django_settings.REDIS_URL, connection_class=CountingConnection)
    monkeypatch.setattr(events.dedup, "_client", lambda: client)
    reserve_event_ids(tenant="acme", event_ids=new_ids(1))  # connects (and loads the script if needed)
    confirmed, in_flight = new_ids(100), new_ids(100)
    reserve_event_ids(tenant="acme", event_ids=confirmed + in_flight)
    confirm_event_ids(tenant="acme", event_ids=confirmed)
    fresh = new_ids(300)
    batch = fresh + confirmed + in_flight
    state_redis.config_resetstat()
    CountingConnection.replies = 0

    claims = reserve_event_ids(tenant="acme", event_ids=batch)

    assert CountingConnection.replies == 1
    assert state_redis.info("commandstats")["cmdstat_evalsha"]["calls"] == 1
    assert claims == [Claim.NEW] * 300 + [Claim.DUPLICATE] * 100 + [Claim.IN_FLIGHT] * 100


def test_it_reserves_after_the_server_lost_its_scripts(state_redis: redis.Redis) -> None:
    first, second = new_ids(2)
    assert reserve_event_ids(tenant="acme", event_ids=[first]) == [Claim.NEW]
    state_redis.script_flush()  # what a restarted server has: no cached scripts
    assert reserve_event_ids(tenant="acme", event_ids=[second, first]) == [Claim.NEW, Claim.IN_FLIGHT]


def test_an_unreachable_shared_state_raises_what_callers_turn_into_a_503(shared_state_down: str) -> None:
    with pytest.raises(STATE_ERRORS):
        reserve_event_ids(tenant="acme", event_ids=new_ids(3))


def test_an_empty_request_sends_nothing(monkeypatch: pytest.MonkeyPatch) -> None:
    client = redis.Redis.from_url(django_settings.REDIS_URL, connection_class=CountingConnection)
    monkeypatch.setattr(events.dedup, "_client", lambda: client)
    CountingConnection.replies = 0
    assert reserve_event_ids(tenant="acme", event_ids=[]) == []
    assert CountingConnection.replies == 0
