"""Settings of the stack `make bench` starts: the platform's own, plus what only benchmarks need.

The naive one-task-per-event baseline task and a trivial view (the API's latency floor) live here,
outside the production URL map and worker: no deployment can switch them on by accident.
"""

from __future__ import annotations

from cloudscale_project.settings import *  # noqa: F403

ROOT_URLCONF = "benchmarks.urls"
CELERY_IMPORTS = ("benchmarks.naive_tasks",)
