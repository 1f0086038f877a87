"""benchmarks/hotpath.py at toy sizes: every stage runs on its own database and gets a figure."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest

from benchmarks.hotpath import STAGES
from tests.conftest import ROOT

pytestmark = [pytest.mark.slow]


def test_it_measures_every_stage_of_two_trees_side_by_side() -> None:
    env = {
        k: v for k, v in os.environ.items() if not k.startswith(("CLOUDSCALE_", "DATABASE_URL", "DJANGO_"))
    }
    done = subprocess.run(
        [sys.executable, "benchmarks/hotpath.py", "--a-tree", ".", "--b-tree", ".", "--rounds", "1", "--batches", "1"],
        cwd=ROOT, env=env, capture_output=True, text=True, timeout=120, check=False,
    )  # fmt: skip

    assert done.returncode == 0, done.stderr[-3000:]
    rows = {line.split()[0]: line.split()[1:] for line in done.stdout.splitlines() if line.split()}
    for stage in STAGES:
        a, b, ratio = (float(value) for value in rows[stage])
        assert a > 0 and b > 0, (stage, rows[stage])
        assert ratio == pytest.approx(b / a, rel=0.05, abs=0.02)  # the table rounds each figure
