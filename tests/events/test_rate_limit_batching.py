"""Concurrent rate-limit checks of one process share a script call (`events.throttling._Batcher`),
and each still gets the decision a call of its own would have given it."""

from __future__ import annotations

import threading
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import pytest

from events.throttling import _Batcher, _Check, check_rate_limits
from tests.conftest import wait_until


class GatedSend:
    """A fake script call: records each call's checks, answers each check with its first key, and
    holds the first call until the test opens the gate, so that others queue behind it."""

    def __init__(self, fail_call: int | None = None) -> None:
        self.calls: list[list[str]] = []
        self.gate = threading.Event()
        self.started = threading.Event()
        self.fail_call = fail_call

    def __call__(self, checks: list[_Check]) -> list[Any]:
        self.calls.append([str(check.keys[0]) for check in checks])
        if len(self.calls) == 1:
            self.started.set()
            assert self.gate.wait(10)
        if self.fail_call == len(self.calls):
            raise ConnectionError("state unreachable")
        return [f"decision for {check.keys[0]!s}" for check in checks]


def _check(name: str) -> _Check:
    return _Check(keys=[name], args=[])


def test_checks_that_arrive_during_a_call_go_together_in_the_next_one() -> None:
    send = GatedSend()
    batcher = _Batcher(send)
    with ThreadPoolExecutor(max_workers=6) as pool:
        first = pool.submit(batcher.decide, _check("first"))
        assert send.started.wait(10)
        later = {name: pool.submit(batcher.decide, _check(name)) for name in ("a", "b", "c", "d", "e")}
        wait_until(lambda: len(batcher._queued) == 5, timeout=10)
        send.gate.set()
        assert first.result(10) == "decision for first"
        assert {name: future.result(10) for name, future in later.items()} == {
            name: f"decision for {name}" for name in later
        }
    assert send.calls[0] == ["first"]
    assert sorted(send.calls[1]) == ["a", "b", "c", "d", "e"] and len(send.calls) == 2
    assert not batcher._in_flight and not batcher._queued


def test_a_failed_call_fails_each_of_its_checks_and_the_next_call_still_goes() -> None:
    send = GatedSend(fail_call=2)
    batcher = _Batcher(send)
    with ThreadPoolExecutor(max_workers=4) as pool:
        first = pool.submit(batcher.decide, _check("first"))
        assert send.started.wait(10)
        queued = [pool.submit(batcher.decide, _check(name)) for name in ("a", "b")]
        wait_until(lambda: len(batcher._queued) == 2, timeout=10)
        send.gate.set()
        assert first.result(10) == "decision for first"
        for future in queued:
            with pytest.raises(ConnectionError, match="state unreachable"):
                future.result(10)
    # Nothing is left in flight: the next check is sent at once, alone.
    assert batcher.decide(_check("after")) == "decision for after"
    assert send.calls[-1] == ["after"]


def test_a_lone_check_is_sent_at_once_and_alone() -> None:
    send = GatedSend()
    send.gate.set()
    batcher = _Batcher(send)
    assert [batcher.decide(_check(name)) for name in ("x", "y")] == ["decision for x", "decision for y"]
    assert send.calls == [["x"], ["y"]]


def test_concurrent_checks_of_one_address_spend_its_bucket_exactly(settings: Any) -> None:
    """The script decides a shared call's checks one after another: 40 concurrent checks of an
    address whose bucket holds 10 admit exactly 10, each told a different remainder."""
    settings.RATE_LIMIT_PER_IP_CAPACITY = 10
    settings.RATE_LIMIT_PER_IP_REFILL_PER_SECOND = 0.001
    settings.RATE_LIMIT_GLOBAL_PER_MINUTE = 10_000
    start = threading.Barrier(40)

    def check(_: int) -> Any:
        start.wait(10)
        return check_rate_limits(ip="192.0.2.77", tenant="acme")

    with ThreadPoolExecutor(max_workers=40) as pool:
        decisions = list(pool.map(check, range(40)))
    admitted = [decision for decision in decisions if decision.allowed]
    assert len(admitted) == 10
    assert sorted(decision.remaining for decision in admitted) == list(range(10))
    assert {decision.limited_by for decision in decisions if not decision.allowed} == {"ip"}
