"""Each benchmark script answers `--help` with its description and examples, and runs nothing."""

from __future__ import annotations

import pytest

from tests.benchmarks.scripts import run_script


@pytest.mark.parametrize(
    "script",
    [
        "run.py",
        "ab.py",
        "drain.py",
        "hotpath.py",
        "pgcost.py",
        "profile_summary.py",
        "ratelimit_cost.py",
        "validation.py",
    ],
)
def test_help_describes_the_script_and_starts_nothing(script: str) -> None:
    result = run_script(script, "--help", timeout=60)

    assert result.returncode == 0, result.stderr
    assert "usage:" in result.stdout
    assert "xample" in result.stdout  # "Examples:" in a description or "examples:" in an epilog
    assert "[bench]" not in result.stdout + result.stderr  # no platform was started


def test_the_bench_refuses_an_argument_it_does_not_know() -> None:
    result = run_script("run.py", "--events", "10", timeout=60)

    assert result.returncode == 2
    assert "unrecognized arguments: --events" in result.stderr
