"""Scheduled-actions step of the pipeline (after the store write): cart-abandonment checks."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from scoring.carts import cart_events_record


def actions_schedule_batch(*, tenant: str, events: Sequence[dict[str, Any]]) -> None:
    """Schedule or cancel delayed actions (cart-abandonment checks) for a batch of stored events.

    Idempotent per event (unique rows, conditional updates): a redelivered batch changes nothing.
    """
    cart_events_record(tenant=tenant, events=events)
