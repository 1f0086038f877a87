"""A worker keeps its database connection from task to task, as an API process does between
requests: Celery's Django fixup would otherwise open a new one for every message (on PostgreSQL a
new server process each time; settings.py, CELERY_DB_REUSE_MAX)."""

from __future__ import annotations

import re
import uuid
from pathlib import Path

import pytest
from django.conf import settings

from cloudscale_project.celery import app
from tests.conftest import start_worker, wait_until

pytestmark = [pytest.mark.core, pytest.mark.e2e]


def test_a_worker_process_reuses_its_database_connection_across_tasks(
    transactional_db: None, tmp_path: Path
) -> None:
    marker = f"db-check-{uuid.uuid4()}"
    worker = start_worker(tmp_path, concurrency=1, extra_args=("-I", "tests.ops.workers"))
    try:
        for _ in range(3):
            app.send_task("tests.db_connections", kwargs={"marker": marker}, queue=settings.QUEUE_NAME)
        wait_until(lambda: len(reports(worker.log(), marker)) == 3, timeout=30, message=worker.log()[-2000:])
    finally:
        worker.stop()

    seen = reports(worker.log(), marker)
    assert len({pid for _, pid in seen}) == 1  # one pool process ran all three
    assert [opened for opened, _ in seen] == [1, 1, 1], worker.log()[-2000:]


def reports(log: str, marker: str) -> list[tuple[int, int]]:
    """(connections opened so far, pid) of each task, as tests.db_connections logs them."""
    return [(int(n), int(pid)) for n, pid in re.findall(rf"{marker} opened=(\d+) pid=(\d+)", log)]
