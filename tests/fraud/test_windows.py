"""The rule windows' script sent now and read later (fraud/windows.py): what the pipeline relies on
when it writes a batch to the database while Redis evaluates it."""

from __future__ import annotations

from datetime import UTC, datetime

import pytest
import redis

from cloudscale_project.state import state_redis as shared_state
from fraud.rules import Entry
from fraud.windows import SCRIPT_TIMEOUT_SECONDS, WindowUpdate, get_fraud_window_store

pytestmark = [pytest.mark.django_db, pytest.mark.core]

T0 = datetime(2026, 11, 26, 10, 0, tzinfo=UTC).timestamp()


def purchases(n: int, *, subject: str = "u1", first: int = 0) -> WindowUpdate:
    entries = [Entry(T0 + i, f"e-{subject}-{i}", subject, "purchase") for i in range(first, first + n)]
    return WindowUpdate(
        tenant="acme",
        rule="purchase_velocity",
        subject=subject,
        entries=entries,
        window_seconds=600,
        threshold=3,
        distinct_users=False,
    )


def connections_in_use() -> int:
    pool = shared_state(socket_timeout=SCRIPT_TIMEOUT_SECONDS).connection_pool
    return len(pool._in_use_connections)


def test_a_begun_evaluation_finds_what_a_whole_one_finds_and_gives_its_connection_back() -> None:
    store = get_fraud_window_store()
    pending = store.begin_add_and_evaluate(updates=[purchases(4)])
    assert connections_in_use() == 1  # the reply waits on its own connection
    [[hit]] = pending.result()
    assert (hit.count, hit.event_ids[-1]) == (4, "e-u1-3")
    assert connections_in_use() == 0
    # The same entries again, whole: recorded once, the same hit.
    [[again]] = store.add_and_evaluate(updates=[purchases(4)])
    assert (again.count, again.bucket) == (4, hit.bucket)


def test_an_abandoned_evaluation_gives_its_connection_back_and_a_retry_finds_the_hit() -> None:
    store = get_fraud_window_store()
    store.begin_add_and_evaluate(updates=[purchases(5)]).abandon()
    assert connections_in_use() == 0
    [[hit]] = store.add_and_evaluate(updates=[purchases(5)])
    assert hit.count == 4  # the window the fourth purchase closes: its bucket's first hit


def test_a_redis_that_lost_its_scripts_still_answers(state_redis: redis.Redis) -> None:
    store = get_fraud_window_store()
    store.add_and_evaluate(updates=[purchases(2)])  # the script is loaded
    state_redis.script_flush()
    [[hit]] = store.begin_add_and_evaluate(updates=[purchases(2, first=2)]).result()
    assert hit.count == 4
    assert connections_in_use() == 0


def test_a_pooled_connection_the_server_closed_is_not_used_for_the_script(state_redis: redis.Redis) -> None:
    store = get_fraud_window_store()
    store.add_and_evaluate(updates=[purchases(1, subject="warm")])  # a pooled connection exists
    state_redis.client_kill_filter(_type="normal", skipme=True)
    [[hit]] = store.begin_add_and_evaluate(updates=[purchases(4, subject="u2")]).result()
    assert hit.count == 4


def test_a_result_is_read_once() -> None:
    pending = get_fraud_window_store().begin_add_and_evaluate(updates=[purchases(1)])
    pending.result()
    with pytest.raises(RuntimeError):
        pending.result()


def test_nothing_to_evaluate_sends_nothing() -> None:
    pending = get_fraud_window_store().begin_add_and_evaluate(updates=[])
    assert connections_in_use() == 0
    assert pending.result() == []
