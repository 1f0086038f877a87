"""gunicorn settings shared by `make run` and the container image."""

from __future__ import annotations

import os
from typing import Any

bind = os.environ.get("GUNICORN_BIND", "127.0.0.1:8000")
workers = int(os.environ.get("WEB_CONCURRENCY", "2"))
# Threads let a worker overlap the broker round trip of one request with the parsing of another.
worker_class = "gthread"
threads = int(os.environ.get("GUNICORN_THREADS", "8"))
timeout = 30
graceful_timeout = 10
keepalive = 5
# Access logs would dominate the output; request metrics and JSON app logs cover them.
accesslog = os.environ.get("GUNICORN_ACCESS_LOG") or None
errorlog = "-"


def child_exit(server: Any, worker: Any) -> None:
    """Prometheus multiprocess mode: drop a dead worker's live gauges from the aggregate."""
    if os.environ.get("PROMETHEUS_MULTIPROC_DIR"):
        from prometheus_client import multiprocess

        multiprocess.mark_process_dead(worker.pid)


def post_worker_init(worker: Any) -> None:
    """Tell the group commit how many request threads the worker runs, then freeze its heap."""
    from events.ingestion import serve_with_threads

    serve_with_threads(worker.cfg.threads)
    _freeze_start_up_heap()


def _freeze_start_up_heap() -> None:
    """Freeze the start-up heap out of the garbage collector's sight (`gc.freeze`), once the worker
    has loaded the application and its views.

    A full collection walks every tracked object: with the start-up heap (about 180,000 objects)
    that stalled all of the process's threads for 118-356 ms at a time under load on a slow
    machine, on the clock of every request in flight (docs/benchmarks.md, "Levers, twelfth
    round"). Frozen, a full collection walks only what was made since. `GUNICORN_GC_FREEZE=0`
    turns it off.
    """
    if os.environ.get("GUNICORN_GC_FREEZE", "1") == "0":
        return
    import gc

    from django.urls import get_resolver

    get_resolver().url_patterns  # noqa: B018 - imports the views and what they import
    gc.collect()
    gc.freeze()
