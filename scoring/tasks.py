"""Beat tasks of scoring and cart abandonment: thin, they call services."""

from __future__ import annotations

import logging

from celery import shared_task
from django.conf import settings

from scoring.carts import cart_checks_fire, cart_state_purge, cart_webhooks_deliver
from scoring.services import scored_events_purge

logger = logging.getLogger(__name__)


@shared_task(
    name="scoring.fire_cart_abandonments",
    queue=settings.OPS_QUEUE_NAME,
    ignore_result=True,
    # A run that waited longer than a period is stale: the next one is already due.
    expires=settings.CART_ABANDONMENT_TICK_SECONDS,
    soft_time_limit=90,
    time_limit=120,
)
def fire_cart_abandonments() -> None:
    """Fire the cart checks that are due, then post the webhooks that are due (new and retries)."""
    fired = cart_checks_fire()
    delivered = cart_webhooks_deliver()
    if fired or delivered:
        logger.info("cart abandonment tick: %d abandoned, %d webhook(s) delivered", len(fired), delivered)


@shared_task(
    name="scoring.purge_expired_state", queue=settings.OPS_QUEUE_NAME, ignore_result=True, time_limit=600
)
def purge_expired_state() -> None:
    """Forget idempotency markers, purchases and resolved cart checks nobody can need any more."""
    scored = scored_events_purge()
    carts = cart_state_purge()
    logger.info("purged %d scoring marker(s) and %d cart row(s)", scored, carts)
