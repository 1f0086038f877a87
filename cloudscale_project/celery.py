"""The Celery app. Its configuration is the `CELERY_*` block of settings.py."""

from __future__ import annotations

import os
from typing import Any

from celery import Celery, Task, signals
from django.db import close_old_connections

from cloudscale_project.observability import install_celery_hooks
from cloudscale_project.serialization import register_orjson

os.environ.setdefault("DJANGO_SETTINGS_MODULE", "cloudscale_project.settings")
# Before the app is used: CELERY_TASK_SERIALIZER names it.
register_orjson()

app = Celery("cloudscale")
app.config_from_object("django.conf:settings", namespace="CELERY")
app.autodiscover_tasks()
# Trace context and correlation id in message headers; tracing set up in worker processes.
install_celery_hooks()
# Every worker publishes a heartbeat to shared state (cloudscale_worker_last_heartbeat_timestamp_seconds).
app.steps["worker"].add("ops.heartbeat:WorkerHeartbeat")


def _close_old_connections(sender: Task | None = None, **_: Any) -> None:
    """Around each task, what Django does around each request: close a connection that is past
    CONN_MAX_AGE or broken, and have the next use of a reused one health-checked first.

    Celery's own close (every task unless CELERY_DB_REUSE_MAX, settings.py) is turned down to
    this. An eager task runs inside its caller's transaction, which must stay open.
    """
    if sender is not None and getattr(sender.request, "is_eager", False):
        return
    close_old_connections()


signals.task_prerun.connect(_close_old_connections, weak=False, dispatch_uid="cs-db-prerun")
signals.task_postrun.connect(_close_old_connections, weak=False, dispatch_uid="cs-db-postrun")
