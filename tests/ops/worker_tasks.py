"""Test-only tasks, imported by test workers with `-I tests.ops.worker_tasks`."""

from __future__ import annotations

import time

from celery import shared_task


@shared_task(name="tests.sleep", ignore_result=True)
def sleep(*, seconds: float) -> None:
    """Keeps a pool process busy, so the autoscaler sees reserved work."""
    time.sleep(seconds)
