"""Delivery counts (events/deliveries.py): a finished delivery's count goes with the next count."""

from __future__ import annotations

import uuid

import pytest
import redis

from events import deliveries
from events.deliveries import deliveries_flush, delivery_finished, delivery_started

pytestmark = [pytest.mark.core]


def _count_key(task_id: str) -> str:
    return f"cloudscale:deliveries:{task_id}:0"


@pytest.fixture(autouse=True)
def _no_leftovers() -> None:
    deliveries._uncleared.clear()


def test_a_finished_count_is_deleted_with_the_next_delivery_count(state_redis: redis.Redis) -> None:
    first, second = str(uuid.uuid4()), str(uuid.uuid4())
    assert delivery_started(task_id=first, retries=0) == 1
    delivery_finished(task_id=first, retries=0)
    assert state_redis.exists(_count_key(first)), "no round trip of its own at the end"

    assert delivery_started(task_id=second, retries=0) == 1
    assert not state_redis.exists(_count_key(first))
    assert state_redis.exists(_count_key(second))


def test_a_stopping_process_deletes_its_finished_counts(state_redis: redis.Redis) -> None:
    task_id = str(uuid.uuid4())
    delivery_started(task_id=task_id, retries=0)
    delivery_finished(task_id=task_id, retries=0)
    deliveries_flush()
    assert not state_redis.exists(_count_key(task_id))
    assert delivery_started(task_id=task_id, retries=0) == 1, "a finished delivery is not a lost one"


def test_a_count_left_by_a_lost_worker_is_still_counted(state_redis: redis.Redis) -> None:
    task_id = str(uuid.uuid4())
    delivery_started(task_id=task_id, retries=0)  # that process died: no delivery_finished
    deliveries._uncleared.clear()
    assert delivery_started(task_id=task_id, retries=0) == 2


def test_counts_it_could_not_delete_wait_for_the_next_round_trip(shared_state_down: str) -> None:
    task_id = str(uuid.uuid4())
    delivery_finished(task_id=task_id, retries=0)
    deliveries_flush()  # the shared state is away: logged, kept for later
    assert deliveries._uncleared == {_count_key(task_id)}
