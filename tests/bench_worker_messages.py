"""Benchmark (not a test: `make test` does not collect it): what running small messages together
saves the worker, side by side in one run (docs/benchmarks.md, "Levers, fifteenth round").

Two workloads of single- or five-event `process_batch` messages, each run with the lever off and
on, alternating, on a real worker (prefork, 2 processes) and the test broker and database:

- backlog: `BENCH_BACKLOG` one-event messages queued before the worker starts; it drains them;
- stream: five-event messages at a steady `BENCH_STREAM_RATE` a second for 10 s into an idle
  worker (what the API's group commit sends under moderate load).

It prints each run and the on/off ratios of the medians: messages a second drained, and the
worker's CPU-ms per message (its main and pool processes, from /proc). Run:

    .venv/bin/pytest -s tests/bench_worker_messages.py
    BENCH_PREFETCH=8 .venv/bin/pytest -s tests/bench_worker_messages.py   # prefetch x8
"""

from __future__ import annotations

import os
import statistics
import time
from collections.abc import Callable
from pathlib import Path

import psutil
from django.conf import settings

from cloudscale_project.celery import app
from events.models import StoredEvent
from events.publishing import TASK_NAME
from tests.conftest import LiveProcess, child_env, start_worker, wait_until
from tests.events.pipeline_support import batch_kwargs, enriched_event

ROUNDS = int(os.environ.get("BENCH_ROUNDS", "2"))
BACKLOG = int(os.environ.get("BENCH_BACKLOG", "2000"))
STREAM_RATE = float(os.environ.get("BENCH_STREAM_RATE", "60"))
STREAM_SECONDS = 10
STREAM_EVENTS = 5


def _worker(tmp_path: Path, name: str, merge: bool) -> LiveProcess:
    env = child_env(
        CLOUDSCALE_WORKER_MERGE_MESSAGES="true" if merge else "false",
        CLOUDSCALE_WORKER_PREFETCH=os.environ.get("BENCH_PREFETCH", "2"),
    )
    return start_worker(tmp_path, name=name, concurrency=2, env=env)


def _cpu_seconds(worker: LiveProcess) -> float:
    main = psutil.Process(worker.process.pid)
    return sum(p.cpu_times().user + p.cpu_times().system for p in [main, *main.children(recursive=True)])


def _publish(events: int) -> None:
    kwargs = batch_kwargs("acme", [enriched_event() for _ in range(events)])
    app.send_task(TASK_NAME, kwargs=kwargs, queue=settings.QUEUE_NAME, kwargsrepr="<bench>")


def _stored_at_least(count: int) -> Callable[[], bool]:
    return lambda: StoredEvent.objects.count() >= count


def _backlog(tmp_path: Path, name: str, merge: bool) -> tuple[float, float]:
    for _ in range(BACKLOG):
        _publish(1)
    worker = _worker(tmp_path, name, merge)
    try:
        cpu, started = _cpu_seconds(worker), time.monotonic()
        wait_until(_stored_at_least(BACKLOG), timeout=600, message="the backlog drained")
        seconds = time.monotonic() - started
        return BACKLOG / seconds, 1000 * (_cpu_seconds(worker) - cpu) / BACKLOG
    finally:
        worker.stop()


def _stream(tmp_path: Path, name: str, merge: bool) -> tuple[float, float]:
    worker = _worker(tmp_path, name, merge)
    messages = int(STREAM_RATE * STREAM_SECONDS)
    try:
        cpu, started = _cpu_seconds(worker), time.monotonic()
        for index in range(messages):
            time.sleep(max(0.0, started + index / STREAM_RATE - time.monotonic()))
            _publish(STREAM_EVENTS)
        wait_until(_stored_at_least(messages * STREAM_EVENTS), timeout=600, message="the stream stored")
        return messages / (time.monotonic() - started), 1000 * (_cpu_seconds(worker) - cpu) / messages
    finally:
        worker.stop()


def test_bench_small_messages_run_together(transactional_db: None, tmp_path: Path) -> None:
    results: dict[tuple[str, bool], list[tuple[float, float]]] = {}
    for workload, run in (("backlog", _backlog), ("stream", _stream)):
        for round_ in range(ROUNDS):
            for merge in (False, True):
                StoredEvent.objects.all().delete()
                rate, cpu_ms = run(tmp_path, f"{workload}-{round_}-{merge}", merge)
                results.setdefault((workload, merge), []).append((rate, cpu_ms))
                state = "on " if merge else "off"
                print(f"\n{workload:8} merge={state} {rate:7.0f} messages/s  {cpu_ms:5.2f} CPU-ms/message")
    print()
    for workload in ("backlog", "stream"):
        off, on = results[(workload, False)], results[(workload, True)]
        rate = statistics.median(r for r, _ in on) / statistics.median(r for r, _ in off)
        cpu = statistics.median(c for _, c in on) / statistics.median(c for _, c in off)
        print(f"RATIO {workload}: messages/s on/off {rate:.2f}, worker CPU per message on/off {cpu:.2f}")
