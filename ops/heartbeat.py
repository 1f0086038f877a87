"""Worker heartbeat in shared state, so the API's /metrics can tell that workers are alive.

Celery's own heartbeats are broker events, which Service Bus cannot carry (no fanout) and which
Prometheus never sees. This worker bootstep writes `time()` to Redis every WORKER_HEARTBEAT_SECONDS;
/metrics exports it as `cloudscale_worker_last_heartbeat_timestamp_seconds{worker}` and
deploy/prometheus/alerts.yml fires when the newest one grows old. Registered in
cloudscale_project/celery.py; it uses the worker's timer, so it runs with or without an event loop.
"""

from __future__ import annotations

import time
from typing import Any

from celery import bootsteps
from django.conf import settings

from cloudscale_project.metrics import (
    platform_labeled_gauge_values,
    platform_remove_labeled_gauges,
    platform_set_labeled_gauge,
)

HEARTBEAT_GAUGE = "cloudscale_worker_last_heartbeat_timestamp_seconds"
POOL_GAUGE = "cloudscale_worker_pool_processes"
# Series of workers gone for this long are dropped (containers come back under new host names).
FORGET_AFTER_SECONDS = 24 * 3600


class WorkerHeartbeat(bootsteps.StartStopStep):  # type: ignore[misc]
    requires = ("celery.worker.components:Timer",)
    label = "CloudScale heartbeat"

    def __init__(self, w: Any, **kwargs: Any) -> None:
        super().__init__(w, **kwargs)
        self.tref: Any = None
        self.labels: dict[str, str] = {}
        self.worker: Any = None

    def start(self, w: Any) -> None:
        self.labels = {"worker": w.hostname}
        self.worker = w
        forget_before = time.time() - FORGET_AFTER_SECONDS
        stale = set(_workers_below(forget_before))
        platform_remove_labeled_gauges(HEARTBEAT_GAUGE, below=forget_before)
        for worker in stale:
            platform_remove_labeled_gauges(POOL_GAUGE, labels={"worker": worker})
        self.beat()
        self.tref = w.timer.call_repeatedly(settings.WORKER_HEARTBEAT_SECONDS, self.beat)

    def beat(self) -> None:
        platform_set_labeled_gauge(HEARTBEAT_GAUGE, self.labels, time.time())
        # The pool starts after this step; until then there is no size to report.
        pool = getattr(self.worker, "pool", None)
        processes = getattr(pool, "num_processes", None) if pool is not None else None
        if isinstance(processes, int):
            platform_set_labeled_gauge(POOL_GAUGE, self.labels, processes)

    def stop(self, w: Any) -> None:
        if self.tref is not None:
            w.timer.cancel(self.tref)
            self.tref = None
            # A clean stop is not an outage: drop the series (a crash leaves it to go stale).
            platform_remove_labeled_gauges(HEARTBEAT_GAUGE, labels=self.labels)
            platform_remove_labeled_gauges(POOL_GAUGE, labels=self.labels)

    shutdown = stop


def _workers_below(timestamp: float) -> list[str]:
    return [
        labels.get("worker", "")
        for labels, value in platform_labeled_gauge_values(HEARTBEAT_GAUGE).items()
        if value < timestamp
    ]


def workers_alive(*, now: float | None = None) -> dict[str, dict[str, float | int | bool | None]]:
    """Every worker with a heartbeat series: {name: {last_heartbeat, age_seconds, alive, pool_processes}}.

    Alive = a heartbeat within three periods (one missed beat is not an outage). Raises redis errors.
    """
    now = time.time() if now is None else now
    pools = {labels.get("worker", ""): v for labels, v in platform_labeled_gauge_values(POOL_GAUGE).items()}
    workers: dict[str, dict[str, float | int | bool | None]] = {}
    for labels, beat in sorted(
        platform_labeled_gauge_values(HEARTBEAT_GAUGE).items(), key=lambda kv: kv[0].get("worker", "")
    ):
        name = labels.get("worker", "")
        pool = pools.get(name)
        workers[name] = {
            "last_heartbeat": beat,
            "age_seconds": round(now - beat, 1),
            "alive": now - beat <= 3 * settings.WORKER_HEARTBEAT_SECONDS,
            "pool_processes": int(pool) if pool is not None else None,
        }
    return workers
