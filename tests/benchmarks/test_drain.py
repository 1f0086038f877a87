"""benchmarks/drain.py at toy sizes: forked processes store every event, and two trees compare."""

from __future__ import annotations

import json
import subprocess

import pytest

from benchmarks.drain import FIGURES
from tests.benchmarks.scripts import rows_of, run_script

pytestmark = [pytest.mark.slow]


def drain(*args: str) -> subprocess.CompletedProcess[str]:
    return run_script("drain.py", "--rounds", "1", "--messages", "2", *args, timeout=180)


def test_it_drains_two_trees_side_by_side() -> None:
    done = drain("--a-tree", ".", "--b-tree", ".")

    assert done.returncode == 0, done.stderr[-3000:]
    assert "2 processes x 2 messages of 500 events" in done.stdout
    rows = rows_of(done.stdout)
    for name in FIGURES:
        a, b, ratio = (float(value) for value in rows[name])
        assert a > 0 and b > 0, (name, rows[name])
        assert ratio == pytest.approx(b / a, rel=0.05, abs=0.02)  # the table rounds each figure
    # 2,000 events stored (the run checks the count) in the wall time it reports.
    for side in ("A", "B"):
        (report,) = [line for line in done.stderr.splitlines() if f" {side}: " in line]
        assert '"events_per_s"' in report


def test_one_process_drains_alone() -> None:
    done = drain("--processes", "1")

    assert done.returncode == 0, done.stderr[-3000:]
    assert float(rows_of(done.stdout)["events_per_s"][0]) > 0
    # The round's report, not the table: the table prints the wall time to 10 ms, and a fast
    # machine drains these 1,000 events in about 60 ms (the product read 1,060 once).
    (report,) = [line for line in done.stderr.splitlines() if " B: " in line]
    figures = json.loads(report.split(" B: ", 1)[1])
    stored = figures["events_per_s"] * figures["wall_s"]
    assert stored == pytest.approx(1000, rel=0.05)  # 2 messages of 500, all stored


def test_it_refuses_an_empty_drain() -> None:
    done = drain("--processes", "0")

    assert done.returncode == 2
    assert "--processes, --messages and --events must be at least 1" in done.stderr


def test_messages_of_another_size_store_every_event() -> None:
    done = drain("--processes", "1", "--events", "120")

    assert done.returncode == 0, done.stderr[-3000:]
    assert "1 processes x 2 messages of 120 events" in done.stdout
    (report,) = [line for line in done.stderr.splitlines() if " B: " in line]
    figures = json.loads(report.split(" B: ", 1)[1])
    assert figures["events_per_s"] * figures["wall_s"] == pytest.approx(240, rel=0.05)
