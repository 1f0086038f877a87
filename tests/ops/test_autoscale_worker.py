"""A real worker with `TargetAutoscaler` resizes its pool when the shared target changes.

The first tests use no broadcast: only the target in shared state (Redis) drives the worker, as on
Service Bus. The pool size is counted as the worker's child processes, not read from a variable.
"""

from __future__ import annotations

import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import psutil
import pytest
from django.conf import settings

from cloudscale_project.celery import app
from ops.models import ConcurrencyChange
from ops.services import concurrency_target_apply, concurrency_target_get
from tests.conftest import ROOT, LiveProcess, child_env, purge_queue, start_worker, wait_until

pytestmark = [pytest.mark.django_db, pytest.mark.e2e]

TASK_SECONDS = 0.3


def _pool_size(worker: LiveProcess) -> int:
    return len(psutil.Process(worker.process.pid).children(recursive=False))


def _set_target(target: int) -> None:
    concurrency_target_apply(target=target, depth=0, reason="test", broadcast=False)


@pytest.fixture
def autoscaling_worker(tmp_path: Path) -> Iterator[LiveProcess]:
    worker = start_worker(
        tmp_path,
        extra_args=("--autoscale", "6,2", "-I", "tests.ops.workers"),
        env=child_env(AUTOSCALE_KEEPALIVE="2", CLOUDSCALE_AUTOSCALE_CHECK_SECONDS="0.5"),
    )
    yield worker
    purge_queue()
    worker.stop()


def _keep_busy(n: int) -> None:
    with app.producer_or_acquire() as producer:
        for _ in range(n):
            app.send_task("tests.sleep", kwargs={"seconds": TASK_SECONDS}, queue=settings.QUEUE_NAME,
                          producer=producer)  # fmt: skip


def _tasks_done(worker: LiveProcess) -> int:
    return worker.log().count("succeeded in")  # Celery's INFO line for each finished task


def test_it_follows_the_shared_target_up_and_down(autoscaling_worker: LiveProcess) -> None:
    _set_target(2)
    _keep_busy(400)
    # The autoscaler has read the target (the worker starts at its ceiling, 6, so this is a change)...
    wait_until(
        lambda: "following concurrency target 2" in autoscaling_worker.log(),
        timeout=15,
        message="target 2 read",
    )
    # ...and through several checks with a backlog reserved, which Celery's own autoscaler would
    # grow to the ceiling, the pool stays at the target while it works.
    done_before = _tasks_done(autoscaling_worker)
    sizes = []
    for _ in range(15):
        sizes.append(_pool_size(autoscaling_worker))
        time.sleep(0.2)
    assert set(sizes) == {2}, sizes
    assert _tasks_done(autoscaling_worker) > done_before, "the backlog was being worked meanwhile"

    _set_target(6)
    wait_until(lambda: _pool_size(autoscaling_worker) == 6, timeout=15, message="pool grows to 6")

    _set_target(3)  # lowered while every process is busy: shrinks as processes finish a task
    wait_until(lambda: _pool_size(autoscaling_worker) == 3, timeout=15, message="pool shrinks to 3")
    time.sleep(2)
    assert _pool_size(autoscaling_worker) == 3
    assert "following concurrency target 3" in autoscaling_worker.log()


def test_it_clamps_the_target_to_the_workers_ceiling(autoscaling_worker: LiveProcess) -> None:
    _set_target(32)
    _keep_busy(200)
    wait_until(lambda: _pool_size(autoscaling_worker) == 6, timeout=15, message="pool grows to its ceiling")
    time.sleep(2)
    assert _pool_size(autoscaling_worker) == 6


def _autoscaler_stats(worker_name: str) -> dict[str, object]:
    destination = [f"{worker_name}@{socket.gethostname()}"]
    # Any: a worker's stats also hold the autoscaler's, which celery-types' _StatInfo does not list.
    stats: dict[str, Any] = app.control.inspect(destination=destination, timeout=2).stats() or {}
    return dict(stats.get(destination[0], {}).get("autoscaler", {}))


def test_it_takes_a_broadcast_target_before_its_next_check(tmp_path: Path) -> None:
    """Where the broker has broadcast (not Service Bus), the change lands at once, clamped alike."""
    worker = start_worker(
        tmp_path,
        name="bcast",
        extra_args=("--autoscale", "6,2"),
        env=child_env(AUTOSCALE_KEEPALIVE="120", CLOUDSCALE_AUTOSCALE_CHECK_SECONDS="120"),
    )
    try:
        concurrency_target_apply(target=4, depth=7_000, reason="test", broadcast=True)
        wait_until(
            lambda: _autoscaler_stats("bcast").get("max") == 4, timeout=10, message="max 4 by broadcast"
        )
        concurrency_target_apply(target=32, depth=0, reason="test", broadcast=True)
        wait_until(lambda: _autoscaler_stats("bcast").get("max") == 6, timeout=10, message="clamped to 6")
        assert _autoscaler_stats("bcast")["target"] == 32
    finally:
        worker.stop()


def test_it_samples_on_beats_schedule_on_a_worker_of_both_queues(
    transactional_db: None, tmp_path: Path
) -> None:
    """Beat → ops queue → worker → target in shared state and a recorded change, end to end."""
    env = child_env(CLOUDSCALE_QUEUE_DEPTH_SAMPLE_SECONDS="1")
    worker = start_worker(
        tmp_path, name="ops", extra_args=("-Q", f"{settings.QUEUE_NAME},{settings.OPS_QUEUE_NAME}"), env=env
    )
    argv = [sys.executable, "-m", "celery", "-A", "cloudscale_project", "beat",
            "--schedule", str(tmp_path / "beat-schedule"), "--loglevel", "INFO"]  # fmt: skip
    log_path = tmp_path / "beat.log"
    with log_path.open("wb") as log:
        process = subprocess.Popen(
            argv, cwd=ROOT, env=env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True
        )
    beat = LiveProcess(process, log_path)
    try:
        wait_until(lambda: concurrency_target_get() == 32, timeout=20, message="a sampled target")
        # The target is in shared state before the change row: the sampler broadcasts in between.
        wait_until(ConcurrencyChange.objects.exists, timeout=20, message="the recorded change")
        assert ConcurrencyChange.objects.get().new_target == 32
    finally:
        beat.stop()
        worker.stop()
    assert "ops.sample_queue_depth" in worker.log()


def test_it_follows_the_shared_target_on_service_bus_without_an_event_loop(tmp_path: Path) -> None:
    """Service Bus: no broadcast and no event loop (the autoscaler runs as a thread), same target.

    The worker runs on the in-memory Service Bus SDK (tests/fakes), which moves no messages between
    processes, so the pool is idle: a target below MIN shrinks it, and MIN comes back after.
    """
    _set_target(6)
    env = child_env(
        CLOUDSCALE_BROKER_URL="azureservicebus://RootManageSharedAccessKey:k3y=@cloudscale-autoscale",
        AUTOSCALE_KEEPALIVE="2",
        CLOUDSCALE_AUTOSCALE_CHECK_SECONDS="0.5",
    )
    argv = [sys.executable, "-m", "tests.fakes.servicebus_run", "celery", "-A", "cloudscale_project", "worker",
            "-Q", settings.QUEUE_NAME, "-n", "sb@%h", "--autoscale", "6,2", "--loglevel", "INFO"]  # fmt: skip
    log_path = tmp_path / "worker-sb.log"
    with log_path.open("wb") as log:
        process = subprocess.Popen(
            argv, cwd=ROOT, env=env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True
        )
    worker = LiveProcess(process, log_path)
    try:
        wait_until(lambda: " ready." in worker.log(), timeout=60, message="worker ready")
        assert _pool_size(worker) == 2
        _set_target(1)
        wait_until(lambda: _pool_size(worker) == 1, timeout=15, message="pool shrinks below MIN to 1")
        _set_target(16)
        wait_until(lambda: _pool_size(worker) == 2, timeout=15, message="pool back to MIN 2")
        assert "following concurrency target 1" in worker.log()
        assert "Traceback" not in worker.log()
    finally:
        worker.stop()
