"""benchmarks/ratelimit_cost.py at a toy size, on an embedded valkey-server of its own."""

from __future__ import annotations

from pathlib import Path

import pytest

from benchmarks.ratelimit_cost import _ARGS, call_args, compare, decision_of, script_of
from tests.benchmarks.scripts import rows_of, run_script
from tests.conftest import ROOT


def test_it_reads_the_rate_limiters_script_from_a_checkout(tmp_path: Path) -> None:
    assert "redis.call('TIME')" in script_of(ROOT)
    (tmp_path / "events").mkdir()
    (tmp_path / "events" / "throttling.py").write_text('_SCRIPT = """\nreturn {1}\n"""\n')
    assert script_of(tmp_path).strip() == "return {1}"
    (tmp_path / "events" / "throttling.py").write_text("nothing here\n")
    with pytest.raises(SystemExit, match="no _SCRIPT literal"):
        script_of(tmp_path)


def test_each_side_is_measured_in_every_round_and_admits_every_call() -> None:
    readings = compare(sources={"A": script_of(ROOT), "B": script_of(ROOT)}, threads=2, calls=30, rounds=3)

    assert [len(side) for side in readings.values()] == [3, 3]
    for reading in readings["A"] + readings["B"]:
        assert reading.server_us > 0 and reading.caller_us > 0 and reading.calls_per_s > 0
        assert reading.script_us > 0  # the server counted the script's runs


def test_each_script_gets_one_check_in_its_own_layout() -> None:
    keys = ["rl:ip:x", "rl:global"]
    several = script_of(ROOT)  # this checkout's script decides several checks a call
    assert call_args(several, keys) == [1, 2, len(_ARGS), *_ARGS]
    assert decision_of(several, [[1, b"", b"0", b"9", b"0"]]) == [1, b"", b"0", b"9", b"0"]
    one = "return {1, '', '0', '9', '0'}"  # a script of one check a call, as before
    assert call_args(one, keys) == list(_ARGS)
    assert decision_of(one, [1, b"", b"0", b"9", b"0"]) == [1, b"", b"0", b"9", b"0"]
    # Both layouts run on a real server and admit every call.
    readings = compare(sources={"A": one, "B": several}, threads=1, calls=5, rounds=1)
    assert [len(side) for side in readings.values()] == [1, 1]


def test_a_script_that_refuses_fails_the_run() -> None:
    refusing = "return {0, 'ip', '1', '0', '0'}"
    with pytest.raises(RuntimeError, match="refused a call"):
        compare(sources={"B": refusing}, threads=1, calls=2, rounds=1)


def test_it_prints_both_sides_and_their_ratio() -> None:
    done = run_script(
        "ratelimit_cost.py",
        "--a-tree",
        str(ROOT),
        "--threads",
        "2",
        "--calls",
        "20",
        "--rounds",
        "2",
        timeout=120,
    )

    assert done.returncode == 0, done.stderr[-3000:]
    rows = rows_of(done.stdout)
    assert len(rows["A"]) >= 4 and len(rows["B"]) >= 4
    ratios = [float(value) for value in rows["B/A"]]
    assert len(ratios) == 4 and all(ratio > 0 for ratio in ratios)
