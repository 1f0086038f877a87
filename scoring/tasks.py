"""Beat tasks of scoring: thin, they call services."""

from __future__ import annotations

import logging

from celery import shared_task
from django.conf import settings

from scoring.services import scored_events_purge

logger = logging.getLogger(__name__)


@shared_task(
    name="scoring.purge_expired_state", queue=settings.OPS_QUEUE_NAME, ignore_result=True, time_limit=600
)
def purge_expired_state() -> None:
    """Forget idempotency markers nobody can need any more."""
    scored = scored_events_purge()
    logger.info("purged %d scoring marker(s)", scored)
