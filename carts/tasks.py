"""Beat tasks of cart abandonment: thin, they call services."""

from __future__ import annotations

import logging

from celery import shared_task
from django.conf import settings

from carts.services import cart_checks_fire, cart_state_purge, cart_webhooks_deliver

logger = logging.getLogger(__name__)


@shared_task(
    name="carts.fire_cart_abandonments",
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
    name="carts.purge_expired_state", queue=settings.OPS_QUEUE_NAME, ignore_result=True, time_limit=600
)
def purge_expired_state() -> None:
    """Forget purchases and resolved cart checks nobody can need any more."""
    purged = cart_state_purge()
    logger.info("purged %d cart row(s)", purged)
