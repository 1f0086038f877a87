"""benchmarks/run.py's latency phase: the rounds of each side pooled into one run's figures."""

from __future__ import annotations

from types import SimpleNamespace
from typing import Any, cast

import pytest

from benchmarks.run import CpuMeter, LatencyResult, LatencyRounds


def _meter(seconds: dict[str, float], *, wall: float, others_cores: float) -> CpuMeter:
    stack = cast(Any, SimpleNamespace(roles=("api", "worker", "redis"), stack="embedded"))
    meter = CpuMeter(stack)
    meter.seconds, meter.wall, meter.others_cores = seconds, wall, others_cores
    return meter


def _run(
    *, requests: int, seconds: float, latencies: list[float], messages: int | None = None
) -> LatencyResult:
    return LatencyResult(
        p50_ms=0.0, p95_ms=0.0, p99_ms=0.0, requests=requests, seconds=seconds, failures=1,
        accepted=requests, messages=messages,
        cpu=_meter({"api": seconds, "worker": 1.0, "redis": 0.5, "client": 0.5}, wall=seconds, others_cores=0.1),
        latencies=latencies,
    )  # fmt: skip


def test_the_rounds_of_a_side_count_as_one_run() -> None:
    first = _run(requests=100, seconds=1.0, latencies=[0.010] * 100, messages=20)
    second = _run(requests=100, seconds=3.0, latencies=[0.030] * 99 + [0.500], messages=30)

    pooled = LatencyResult.pooled([first, second])

    assert (pooled.requests, pooled.seconds, pooled.failures, pooled.messages) == (200, 4.0, 2, 50)
    assert pooled.per_second == 50.0  # 200 requests in 4 s, not the mean of 100/s and 33/s
    assert pooled.p50_ms == pytest.approx(10.0)
    assert pooled.p99_ms == pytest.approx(30.0)  # the 198th of 200 sorted latencies
    assert len(pooled.latencies) == 200 and pooled.latencies == sorted(pooled.latencies)
    assert pooled.cpu.seconds == {"api": 4.0, "worker": 2.0, "redis": 1.0, "client": 1.0}
    assert pooled.cpu.per_thousand_total(pooled.requests) == pytest.approx(40.0)
    assert pooled.cpu.others_cores == pytest.approx(0.1)
    assert pooled.cpu.wall == 4.0


def test_a_side_without_counted_messages_has_none() -> None:
    pooled = LatencyResult.pooled([_run(requests=10, seconds=1.0, latencies=[0.01] * 10, messages=None)] * 2)

    assert pooled.messages is None


def test_the_ratio_pools_every_round_and_each_round_is_kept() -> None:
    floors = [
        _run(requests=300, seconds=1.0, latencies=[0.01]),
        _run(requests=300, seconds=2.0, latencies=[0.01]),
    ]
    singles = [
        _run(requests=300, seconds=2.0, latencies=[0.02]),
        _run(requests=300, seconds=2.0, latencies=[0.02]),
    ]

    rounds = LatencyRounds(floor_rounds=floors, api_rounds=singles)

    assert rounds.ratios() == [pytest.approx(0.5), pytest.approx(1.0)]
    assert rounds.single_vs_floor == pytest.approx((600 / 4.0) / (600 / 3.0))
