"""A Celery autoscaler that follows the concurrency target in shared state.

Set as `worker_autoscaler` (settings.CELERY_WORKER_AUTOSCALER); active in workers started with
`--autoscale MAX,MIN`. MAX is this worker's ceiling (what the machine can carry), MIN its floor.
The published target becomes the pool's maximum, clamped to the ceiling; within it the pool still
grows with the reserved work and reaps idle processes, as Celery's autoscaler does.

Reading the target from Redis instead of waiting for a broadcast is what makes it work on Azure
Service Bus, whose kombu transport has no fanout. A broadcast `autoscale` (Redis, RabbitMQ) lands
in `update()` and is treated as the same target, so both paths agree.

Pitfalls this class avoids (Celery 5.7, docs/decisions.md "Measured facts"): in thread mode (no
event loop, e.g. Service Bus) `body()` holds the mutex while it calls `maybe_scale()`, so the
periodic path never calls `update()`; `maybe_scale()` also runs on every received task, so the
Redis read is throttled; and the base `_maybe_scale` keeps a lowered maximum exceeded while tasks
are reserved, so we shrink explicitly, one shrink at a time (see `_shrink`). These are private
Celery hooks: pyproject.toml pins Celery's minor version and tests/ops/test_autoscaler_celery_hooks.py
fails when a new version changes them.
"""

from __future__ import annotations

import builtins
import logging
from time import monotonic
from typing import Any

import redis
from celery.worker.autoscale import AUTOSCALE_KEEPALIVE, Autoscaler
from django.conf import settings

from ops.services import concurrency_target_get

logger = logging.getLogger(__name__)


class TargetAutoscaler(Autoscaler):  # type: ignore[misc]
    def __init__(
        self,
        pool: Any,
        max_concurrency: int,
        min_concurrency: int = 0,
        worker: Any = None,
        keepalive: float = AUTOSCALE_KEEPALIVE,
        mutex: Any = None,
    ) -> None:
        # Celery uses `keepalive` twice: as the tick of the event loop's check and as the idle time
        # before a process is reaped. We tick every AUTOSCALE_CHECK_SECONDS (to follow the target
        # within one sampling period) and keep `keepalive` as the idle time.
        check_seconds = min(settings.AUTOSCALE_CHECK_SECONDS, keepalive)
        super().__init__(
            pool, max_concurrency, min_concurrency, worker=worker, keepalive=check_seconds, mutex=mutex
        )
        self.idle_seconds = keepalive
        self.ceiling = max_concurrency
        self.floor = min_concurrency
        self.target: int | None = None
        self._next_read = 0.0

    # --- the shared target ----------------------------------------------------------------------

    def _follow_shared_target(self) -> None:
        now = monotonic()
        if now < self._next_read:
            return
        self._next_read = now + self.keepalive
        try:
            target = concurrency_target_get()
        except redis.RedisError as exc:
            logger.warning("concurrency target unreadable, keeping max=%s: %s", self.max_concurrency, exc)
            return
        if target is not None:
            self._apply_target(target)

    def _apply_target(self, target: int) -> None:
        """Make `target` (clamped to this worker's ceiling) the pool maximum. Caller holds the mutex."""
        self.target = target
        bounded = max(1, min(target, self.ceiling))
        if bounded == self.max_concurrency:
            return
        logger.info(
            "following concurrency target %s: pool max %s -> %s", target, self.max_concurrency, bounded,
            extra={"event": "worker_concurrency_changed", "target": target},
        )  # fmt: skip
        if self.worker is not None and getattr(self.worker, "consumer", None) is not None:
            self._update_consumer_prefetch_count(bounded)
        self.max_concurrency = bounded
        self.min_concurrency = min(self.floor, bounded)

    # --- Celery's hooks -----------------------------------------------------------------------------

    def _maybe_scale(self, req: Any = None) -> bool | None:
        self._follow_shared_target()
        excess = self.processes - self.max_concurrency
        if excess > 0:
            # Only idle processes can go: the rest follow as they finish (retried every tick).
            self._shrink(excess)
            return True
        if self.processes < self.min_concurrency:
            # The floor came back after a target below it (Celery grows to MIN only in update()).
            self._grow(self.min_concurrency - self.processes)
            return True
        result: bool | None = super()._maybe_scale(req)
        return result

    def _pool_settling(self) -> bool:
        """True while a pool process is still starting up or already told to exit but not gone."""
        inner = getattr(self.pool, "_pool", None)  # billiard/AsynPool behind Celery's TaskPool
        if inner is None:
            return False
        if getattr(inner, "_waiting_to_start", None):
            return True
        # Listed until the pool reaps it, even after it exited: shrink() would pick it again.
        return any(getattr(p, "_controlled_termination", False) for p in getattr(inner, "_pool", ()))

    def _shrink(self, n: int) -> None:
        # billiard's shrink() SIGTERMs "inactive" processes and counts them gone at once. Two
        # cases break that count (seen under load; the pool then runs more processes than it
        # counts, or stalls with reserved tasks): a process told to exit stays listed, inactive,
        # until the pool reaps it, so a second shrink counts it twice; and a just-forked process
        # has not yet replaced the parent's SIGTERM handler. So shrink only a settled pool; the
        # next tick goes on.
        if self._pool_settling():
            return
        super()._shrink(n)

    def scale_down(self, n: int) -> None:
        """Reap idle processes after `idle_seconds` without work (Celery's rule, with our idle time)."""
        moments = [t for t in (self._last_scale_up, self._last_task_received) if t is not None]
        if moments and monotonic() - max(moments) > self.idle_seconds:
            self._shrink(n)

    def update(self, max: int | None = None, min: int | None = None) -> tuple[int, int]:
        """Remote control `autoscale` (the broadcast extra): `max` is a target, like the shared one."""
        with self.mutex:
            if min is not None:
                self.floor = min
            if max is not None:
                self._apply_target(max)
            self.min_concurrency = builtins.min(self.floor, self.max_concurrency)
            if self.processes > self.max_concurrency:
                self._shrink(self.processes - self.max_concurrency)
            elif self.processes < self.min_concurrency:
                self._grow(self.min_concurrency - self.processes)
            return self.max_concurrency, self.min_concurrency

    def info(self) -> dict[str, Any]:
        details: dict[str, Any] = super().info()
        details.update(target=self.target, ceiling=self.ceiling, floor=self.floor)
        return details
