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

from cloudscale_project.metrics import platform_remove_labeled_gauges, platform_set_labeled_gauge

HEARTBEAT_GAUGE = "cloudscale_worker_last_heartbeat_timestamp_seconds"
# Series of workers gone for this long are dropped (containers come back under new host names).
FORGET_AFTER_SECONDS = 24 * 3600


class WorkerHeartbeat(bootsteps.StartStopStep):  # type: ignore[misc]
    requires = ("celery.worker.components:Timer",)
    label = "CloudScale heartbeat"

    def __init__(self, w: Any, **kwargs: Any) -> None:
        super().__init__(w, **kwargs)
        self.tref: Any = None
        self.labels: dict[str, str] = {}

    def start(self, w: Any) -> None:
        self.labels = {"worker": w.hostname}
        platform_remove_labeled_gauges(HEARTBEAT_GAUGE, below=time.time() - FORGET_AFTER_SECONDS)
        self.beat()
        self.tref = w.timer.call_repeatedly(settings.WORKER_HEARTBEAT_SECONDS, self.beat)

    def beat(self) -> None:
        platform_set_labeled_gauge(HEARTBEAT_GAUGE, self.labels, time.time())

    def stop(self, w: Any) -> None:
        if self.tref is not None:
            w.timer.cancel(self.tref)
            self.tref = None
            # A clean stop is not an outage: drop the series (a crash leaves it to go stale).
            platform_remove_labeled_gauges(HEARTBEAT_GAUGE, labels=self.labels)

    shutdown = stop
