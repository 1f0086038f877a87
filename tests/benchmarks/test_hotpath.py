"""benchmarks/hotpath.py at toy sizes: every stage runs on its own database and gets a figure."""

from __future__ import annotations

import gc
import subprocess

import pytest

from benchmarks.hotpath import BODY_SECTIONS, STAGES, _heap_as_a_workers
from tests.benchmarks.scripts import rows_of, run_script

pytestmark = [pytest.mark.slow]


def hotpath(*args: str) -> subprocess.CompletedProcess[str]:
    return run_script("hotpath.py", "--rounds", "1", "--batches", "1", *args, timeout=120)


def test_it_measures_every_stage_of_two_trees_side_by_side() -> None:
    done = hotpath("--a-tree", ".", "--b-tree", ".")

    assert done.returncode == 0, done.stderr[-3000:]
    assert "in messages of 500 events" in done.stdout
    rows = rows_of(done.stdout)
    for stage in STAGES:
        a, b, ratio = (float(value) for value in rows[stage])
        assert a > 0 and b > 0, (stage, rows[stage])
        assert ratio == pytest.approx(b / a, rel=0.05, abs=0.02)  # the table rounds each figure
    for section in BODY_SECTIONS:
        assert len(rows[f"body.{section}"]) == 3, rows


def test_it_splits_the_task_body_into_its_parts() -> None:
    """The body.* rows time each part of the task body as the worker runs it, and add up to it."""
    done = hotpath()

    assert done.returncode == 0, done.stderr[-3000:]
    rows = rows_of(done.stdout)
    body = {section: float(rows[f"body.{section}"][0]) for section in BODY_SECTIONS}
    assert all(body[part] > 0 for part in ("decode", "fraud", "scoring", "store", "carts")), body
    assert all(value >= 0 for value in body.values()), body
    # The parts (the collector's time is inside them) make one whole body, measured in a pass of
    # its own: the same order as the pipeline row, on one batch of toy runs.
    parts = sum(value for section, value in body.items() if section != "gc")
    assert 0.5 < parts / float(rows["pipeline"][0]) < 2.0, (parts, rows["pipeline"])


def test_it_measures_the_worker_stages_in_smaller_messages() -> None:
    """Single events reach the worker a few per message: the per-message share shows at that size."""
    done = hotpath("--message-size", "4")

    assert done.returncode == 0, done.stderr[-3000:]
    assert "in messages of 4 events" in done.stdout
    # The stages ran: one figure each (a single tree has no B/A column).
    rows = rows_of(done.stdout)
    assert all(len(rows[stage]) == 1 and float(rows[stage][0]) > 0 for stage in STAGES), rows


def test_a_stage_is_timed_with_what_was_made_before_it_out_of_the_collectors_sight() -> None:
    """A worker holds the message it runs; the harness's batches, made in advance, are frozen."""
    made_before = [[n] for n in range(1_000)]

    def seen_by_the_collector() -> bool:
        return any(obj is made_before for obj in gc.get_objects())

    assert seen_by_the_collector()
    with _heap_as_a_workers():
        assert gc.get_freeze_count() >= len(made_before)
        assert not seen_by_the_collector()

    assert gc.get_freeze_count() == 0  # the process goes on as before
    assert seen_by_the_collector()
