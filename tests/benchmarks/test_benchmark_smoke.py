"""`make bench` end to end at toy sizes: it starts its own stack, measures every figure, stops it."""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import psutil
import pytest

from tests.conftest import ROOT

pytestmark = [pytest.mark.slow, pytest.mark.e2e]

RESULT = re.compile(
    r"^RESULT e2e_events_per_s=(\d+) ratio_vs_naive=(\d+\.\d) p99_ms=(\d+\.\d) cpu_s_per_1k=(\d+\.\d{3}) "
    r"single_vs_floor=(\d+\.\d{2}) open_p99_ms=(\d+\.\d) hot_ratio=(\d+\.\d{2})$"
)
TINY = {
    "CLOUDSCALE_BENCH_EVENTS": "1000",
    "CLOUDSCALE_BENCH_BATCH": "250",
    "CLOUDSCALE_BENCH_CLIENTS": "2",
    "CLOUDSCALE_BENCH_NAIVE_EVENTS": "100",
    "CLOUDSCALE_BENCH_LATENCY_CLIENTS": "10",
    "CLOUDSCALE_BENCH_LATENCY_REQUESTS": "100",
    "CLOUDSCALE_BENCH_OPEN_REQUESTS": "100",
    "CLOUDSCALE_BENCH_TIMEOUT": "120",
    "CLOUDSCALE_BENCH_MAKE_RUN_EVENTS": "500",
    "CLOUDSCALE_BENCH_MAKE_RUN_ROUNDS": "1",
    "CLOUDSCALE_BENCH_PREFILL_EVENTS": "1500",
}


def test_it_prints_the_table_and_ends_with_the_result_line() -> None:
    # The bench builds its own environment; the test run's (queue, database, state) must not leak in.
    env = {
        k: v for k, v in os.environ.items() if not k.startswith(("CLOUDSCALE_", "DATABASE_URL", "DJANGO_"))
    }
    env.update(TINY)
    before = {p.pid for p in psutil.process_iter()}

    done = subprocess.run(
        [sys.executable, "benchmarks/run.py"],
        cwd=ROOT, env=env, capture_output=True, text=True, timeout=280, check=False,
    )  # fmt: skip

    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    lines = done.stdout.strip().splitlines()
    match = RESULT.match(lines[-1])
    assert match, lines[-1]
    e2e, ratio, p99 = int(match[1]), float(match[2]), float(match[3])
    assert e2e > 0 and ratio > 0 and p99 > 0
    cpu_per_1k, single_vs_floor, open_p99, hot_ratio = (float(match[n]) for n in range(4, 8))
    assert cpu_per_1k > 0 and single_vs_floor > 0 and open_p99 > 0 and hot_ratio > 0
    table = done.stdout
    for label in (
        "batched e2e (POST /api/events/batch)",
        "naive e2e (a task per event)",
        "ratio batched / naive",
        "POST /api/events, 10 clients",
        "floor: trivial view, 10 clients",
        "peak memory, API (gunicorn)",
        "peak memory, worker (Celery)",
        "batched e2e, one client address",
        "ratio per-session / one address",
        "ratio single / floor (req/s)",
        "POST /api/events, open loop",
        "floor: trivial view, open loop",
        "profile: CPU seconds per 1,000 events or requests, by process group",
        "as make run starts it",
        "CPU per event, make run / bench",
        "reference loop (CPU speed)",
    ):
        assert label in table
    assert re.search(
        r"load generator's full GCs\s+(none|\d+, the longest \d+ ms) \(in the measured runs\)", table
    )
    assert "1,000 events, batches of 250, 2 clients, tables aged by 1,500 events a tenant" in table
    # Every tenant a batched run writes was aged first (the bench fails if a prefilled event is
    # not stored).
    for tenant in ("demo", "demo-sdk", "demo-hot"):
        assert f"prefill: 1,500 of 1,500 events stored for tenant {tenant}" in done.stderr
    # The make-run platform's run, as that bench reports it: the caller's knobs reached it.
    assert "500 events, batches of 250, 2 clients, embedded stack" in table
    assert "the worker at up to" in table
    assert re.search(r"at that CPU cost [\d,]+ req/s need \d+\.\d\d of the \d+ cores", table)
    # The latency phase alternates the floor's and the API's runs, three of each by default.
    assert re.search(
        r"ratio single / floor \(req/s\)\s+\d+\.\d\d \(round by round: (\d+\.\d\d, ){2}\d+\.\d\d\)", table
    )
    assert "300 requests in 3 rounds" in table
    figures = next(line for line in lines if line.startswith("FIGURES "))
    measured = json.loads(figures.removeprefix("FIGURES "))
    assert measured["make_run_cpu_s_per_1k"] > 0 and measured["make_run_beside_cpu_s_per_1k"] > 0
    # make run's configuration is judged beside the bench's, measured in the same round.
    assert re.search(
        r"CPU per event, make run / bench\s+\d+\.\d\dx side by side; \d+\.\d\dx of the batched run above",
        table,
    )
    assert re.search(
        r"its runs' mean \d\.\d{3} CPU-s per 1,000 events; the bench's configuration beside it \d\.\d{3} "
        r"\(round by round, make run / bench: \d\.\d{3} / \d\.\d{3}\)",
        table,
    )
    assert measured["reference_loop_ms"] > 0
    assert len(measured["single_vs_floor_rounds"]) == 3
    # The worker's main process is a part of the worker, measured apart: never all of it. It may
    # read nothing here: process CPU times tick every 10 ms, and on a fast machine this run's
    # 1,000 events cost the main process about 5 ms.
    assert 0 <= measured["worker_main_cpu_s_per_1k"] < measured["worker_cpu_s_per_1k"]
    assert "of which the worker's main process(es)" in table
    leftovers = [
        p for p in psutil.process_iter(["pid", "cmdline"])
        if p.pid not in before and "cloudscale-bench-" in " ".join(p.info["cmdline"] or [])
    ]  # fmt: skip
    assert leftovers == [], "the bench left processes behind"


def test_the_bench_times_its_own_full_collections_only() -> None:
    import gc

    from benchmarks.run import CollectorPauses

    with CollectorPauses() as pauses:
        gc.collect(0)  # a young generation: not a pause of the whole heap
        gc.collect()
    assert len(pauses.durations_ms) == 1
    assert pauses.line().startswith("1, the longest ")
    assert CollectorPauses().line() == "none"


def test_it_keeps_the_platforms_logs_when_asked() -> None:
    """`CLOUDSCALE_BENCH_KEEP_STATE=1`: the state folder, with the worker's log, stays and is named."""
    env = {
        k: v for k, v in os.environ.items() if not k.startswith(("CLOUDSCALE_", "DATABASE_URL", "DJANGO_"))
    }
    env.update(TINY)
    env.update({"CLOUDSCALE_BENCH_PHASES": "latency", "CLOUDSCALE_BENCH_KEEP_STATE": "1"})

    done = subprocess.run(
        [sys.executable, "benchmarks/run.py"],
        cwd=ROOT, env=env, capture_output=True, text=True, timeout=280, check=False,
    )  # fmt: skip

    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    kept = re.search(r"logs and data kept in (\S+)", done.stdout + done.stderr)
    assert kept, done.stdout[-2000:]
    state = Path(kept[1])
    try:
        worker_log = (state / "logs" / "worker.log").read_text(errors="replace")
        assert "processed" in worker_log  # the latency run's events went through the worker
        assert (state / "logs" / "api.log").stat().st_size > 0
    finally:
        shutil.rmtree(state, ignore_errors=True)
