"""benchmarks/run.py's run 7: `make run`'s configuration measured beside the bench's, alternating."""

from __future__ import annotations

from typing import Any

import pytest

from benchmarks import run
from benchmarks.run import BenchConfig, make_run_order, run_as_users


def test_the_configurations_alternate_and_neither_always_runs_first() -> None:
    assert make_run_order(1) == [False, True]
    assert make_run_order(2) == [False, True, True, False]
    assert make_run_order(3) == [False, True, True, False, False, True]


def test_make_run_is_compared_with_the_bench_configuration_of_the_same_rounds(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    # Each child's figures as that child bench would print them, in the order they are started.
    readings = iter([0.150, 0.138, 0.151, 0.140])  # bench, make run, make run, bench
    started: list[bool] = []

    def child(config: BenchConfig, *, as_users: bool) -> dict[str, Any]:
        started.append(as_users)
        return {
            "e2e_events_per_s": 12_000 if as_users else 11_000,
            "cpu_s_per_1k": next(readings),
            "cpu_line": "line",
            "worker_processes_peak": 3,
            "run": "30,000 events",
        }

    monkeypatch.setattr(run, "_child_bench", child)
    monkeypatch.delenv("CLOUDSCALE_BENCH_PHASES", raising=False)
    monkeypatch.setenv("CLOUDSCALE_BENCH_MAKE_RUN_ROUNDS", "2")

    result = run_as_users(BenchConfig())

    assert result is not None
    assert started == [False, True, True, False]
    assert result.cpu_s_per_1k == pytest.approx((0.138 + 0.151) / 2)
    assert result.beside_cpu_s_per_1k == pytest.approx((0.150 + 0.140) / 2)
    assert result.ratio == pytest.approx(0.289 / 0.290)
    assert result.rounds == [(0.138, 0.150), (0.151, 0.140)]
    assert result.events_per_s == 12_000


def test_no_make_run_rounds_when_the_bench_runs_some_phases_only(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("CLOUDSCALE_BENCH_PHASES", "batched")
    monkeypatch.setattr(run, "_child_bench", lambda *a, **k: pytest.fail("no child bench expected"))
    assert run_as_users(BenchConfig()) is None
