"""Beat tasks of the ops app: thin, they call one service."""

from __future__ import annotations

import logging

import redis
from celery import shared_task
from django.conf import settings
from kombu.exceptions import KombuError

from ops.services import backpressure_sample

logger = logging.getLogger(__name__)


@shared_task(
    name="ops.sample_queue_depth",  # routed to OPS_QUEUE_NAME (settings.CELERY_TASK_ROUTES)
    ignore_result=True,
    # A sample that waited longer than a period is stale: the next one is already due.
    expires=settings.QUEUE_DEPTH_SAMPLE_SECONDS,
    soft_time_limit=20,
    time_limit=30,
)
def sample_queue_depth() -> None:
    """Publish the ingestion queue's depth and the worker concurrency target it implies."""
    try:
        sample = backpressure_sample()
    except (OSError, KombuError, redis.RedisError) as exc:
        # Workers keep the last target; the next sample tries again.
        logger.warning("queue depth sample failed: %s", exc, extra={"event": "queue_depth_sample_failed"})
        return
    logger.debug("queue depth %d, concurrency target %d", sample.depth, sample.target)
