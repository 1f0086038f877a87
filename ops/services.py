"""Backpressure: sample the ingestion queue, decide the worker concurrency target, publish it.

The target lives in shared state (Redis, `settings.REDIS_URL`), where every worker's
`ops.autoscaler.TargetAutoscaler` reads it: that works on every broker, Service Bus included,
which has no broadcast. Where the broker has broadcast, a remote-control `autoscale` is sent too,
so workers react at once instead of at their next check; it is an extra, never the only path.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from datetime import datetime
from functools import cache

import redis
from django.conf import settings
from django.utils import timezone
from kombu.exceptions import KombuError

from cloudscale_project.celery import app
from cloudscale_project.metrics import platform_set_gauge
from ops.autoscale import concurrency_target
from ops.models import ConcurrencyChange
from ops.queue_depth import queue_depth

logger = logging.getLogger(__name__)

TARGET_KEY = "autoscale:concurrency_target"
# The worker reads the target from its event loop: a Redis outage must cost it milliseconds, not
# seconds, per read (it keeps its last target meanwhile).
TARGET_READ_TIMEOUT_SECONDS = 0.5


@dataclass(frozen=True)
class BackpressureSample:
    depth: int
    old_target: int | None
    target: int
    reason: str

    @property
    def changed(self) -> bool:
        return self.old_target != self.target


@cache
def _state_redis() -> redis.Redis:
    return redis.Redis.from_url(
        settings.REDIS_URL,
        socket_timeout=TARGET_READ_TIMEOUT_SECONDS,
        socket_connect_timeout=TARGET_READ_TIMEOUT_SECONDS,
    )


def concurrency_target_get() -> int | None:
    """The published target, or None if none was published yet. Raises redis errors."""
    raw = _state_redis().get(TARGET_KEY)
    return int(raw) if raw is not None else None


def _last_recorded_target() -> int | None:
    """After a loss of shared state, the database history remembers the target in force."""
    last = (
        ConcurrencyChange.objects.order_by("-changed_at", "-id").values_list("new_target", flat=True).first()
    )
    return int(last) if last is not None else None


def broadcast_supported() -> bool:
    """Service Bus's kombu transport has no fanout: remote control (inspect, autoscale) never arrives."""
    return settings.BROKER_SCHEME != "azureservicebus"


def concurrency_target_apply(
    *,
    target: int,
    depth: int,
    reason: str,
    current: int | None = None,
    broadcast: bool | None = None,
    now: datetime | None = None,
) -> BackpressureSample:
    """Publish `target` to shared state; if that changed it, record the change and broadcast it.

    `current` is the target the caller decided from (for the record when shared state was empty).
    SET ... GET swaps the value atomically, so of two samplers racing only one records the change.
    """
    previous_raw = _state_redis().set(TARGET_KEY, target, get=True)
    previous = int(previous_raw) if previous_raw is not None else current
    platform_set_gauge("cloudscale_worker_concurrency_target", target)
    sample = BackpressureSample(depth=depth, old_target=previous, target=target, reason=reason)
    if not sample.changed:
        return sample
    sent = False
    if broadcast is None:
        broadcast = broadcast_supported()
    if broadcast:
        sent = _broadcast_autoscale(target)
    ConcurrencyChange.objects.create(
        changed_at=now or timezone.now(),
        queue_depth=depth,
        old_target=previous,
        new_target=target,
        reason=reason[:200],
        broadcast=sent,
    )
    logger.info(
        "concurrency target %s -> %s at queue depth %d (%s)", previous, target, depth, reason,
        extra={"event": "concurrency_target_changed", "queue_depth": depth, "old_target": previous,
               "new_target": target},
    )  # fmt: skip
    return sample


def _broadcast_autoscale(target: int) -> bool:
    """Tell live workers now; `TargetAutoscaler.update` clamps `max` to each worker's own bounds."""
    try:
        app.control.broadcast("autoscale", arguments={"max": target, "min": None})
    except (OSError, KombuError, redis.RedisError):
        logger.warning("autoscale broadcast failed; workers follow the shared target", exc_info=True)
        return False
    return True


def backpressure_sample(*, broadcast: bool | None = None) -> BackpressureSample:
    """Beat's job every QUEUE_DEPTH_SAMPLE_SECONDS: depth → gauge → target (with hysteresis)."""
    depth = queue_depth()
    platform_set_gauge("cloudscale_queue_depth", depth)
    current = concurrency_target_get()
    if current is None:
        current = _last_recorded_target()
    decision = concurrency_target(depth=depth, current=current)
    return concurrency_target_apply(
        target=decision.target, depth=depth, reason=decision.reason, current=current, broadcast=broadcast
    )
