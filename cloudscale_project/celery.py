"""The Celery app. Its configuration is the `CELERY_*` block of settings.py."""

from __future__ import annotations

import os

from celery import Celery

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
