"""Running a benchmark script as a user would, for the tests of its toy-sized runs."""

from __future__ import annotations

import os
import subprocess
import sys

from tests.conftest import ROOT


def run_script(script: str, *args: str, timeout: float) -> subprocess.CompletedProcess[str]:
    """`python benchmarks/<script> *args` from the checkout, without the test run's settings."""
    env = {
        k: v for k, v in os.environ.items() if not k.startswith(("CLOUDSCALE_", "DATABASE_URL", "DJANGO_"))
    }
    return subprocess.run(
        [sys.executable, f"benchmarks/{script}", *args],
        cwd=ROOT, env=env, capture_output=True, text=True, timeout=timeout, check=False,
    )  # fmt: skip


def rows_of(stdout: str) -> dict[str, list[str]]:
    """A printed table's rows by their first word."""
    return {line.split()[0]: line.split()[1:] for line in stdout.splitlines() if line.split()}
