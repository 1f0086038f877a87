"""Test-only tasks (worker processes import them with `-I tests.ops.workers`) and an in-process worker."""

from __future__ import annotations

import logging
import os
import time
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

from celery import shared_task
from celery.contrib.testing.worker import start_worker
from django.db import connection
from django.db.backends.signals import connection_created
from django.test import override_settings

from cloudscale_project.celery import app

logger = logging.getLogger(__name__)


@shared_task(name="tests.sleep", ignore_result=True)
def sleep(*, seconds: float) -> None:
    """Keeps a pool process busy, so the autoscaler sees reserved work."""
    time.sleep(seconds)


@shared_task(name="tests.log_line", ignore_result=True)
def log_line(*, message: str) -> None:
    """Logs one line from inside a task, to see what a worker's log lines carry."""
    logger.info(message, extra={"tenant": "acme", "event_type": "page_view"})


_opened = {"connections": 0}


def _count_connection(**_: Any) -> None:
    _opened["connections"] += 1


connection_created.connect(_count_connection, weak=False, dispatch_uid="tests-count-db-connections")


@shared_task(name="tests.db_connections", ignore_result=True)
def db_connections(*, marker: str) -> None:
    """Uses the database, then logs how many connections this process has opened so far."""
    with connection.cursor() as cursor:
        cursor.execute("SELECT 1")
    logger.info("%s opened=%d pid=%d", marker, _opened["connections"], os.getpid())


@contextmanager
def in_process_worker() -> Iterator[Any]:
    """A real Celery worker consuming the test queue in a thread of this process (solo pool).

    Needs `transactional_db`: the worker thread has its own database connection.
    """
    # The worker's event loop sleeps until its next timer when the broker is quiet (RabbitMQ):
    # a short heartbeat period lets it notice the stop request quickly.
    # Without loglevel, Celery's test worker sets the root logger to ERROR for the rest of the run.
    with (
        override_settings(WORKER_HEARTBEAT_SECONDS=0.5),
        start_worker(
            app, pool="solo", perform_ping_check=False, shutdown_timeout=10, loglevel="INFO"
        ) as worker,
    ):
        yield worker
