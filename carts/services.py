"""Cart abandonment (docs/api.md, "Cart abandonment"): scheduled in the database, fired by beat.

- The actions step records every add_to_cart as a CartCheck due CART_ABANDONMENT_MINUTES of event
  time later, and every purchase as a CartPurchase that cancels the user's pending checks with
  added_at <= purchase time < due_at.
- Beat calls `cart_checks_fire`: due checks (due_at <= wall clock) are checked once more against the
  recorded purchases — that covers a purchase processed concurrently with, or before, its
  add_to_cart — and each one left becomes exactly one CartAbandonment (the check's status change
  and the unique cart id decide it, so two overlapping beat runs cannot both fire a cart).
- `cart_webhooks_deliver` POSTs each abandonment's signed payload when the tenant has a webhook URL.
  A sender first claims the row (conditional update tagged with its token), so two senders never
  post the same cart; a failed POST is retried with exponential backoff; a sender that died while
  posting leaves an unknown outcome, which is marked failed rather than re-sent (an operator can
  retry it from admin): never twice for the same cart.
"""

from __future__ import annotations

import logging
import random
import uuid
from collections import defaultdict
from collections.abc import Iterable, Sequence
from concurrent.futures import ThreadPoolExecutor
from datetime import datetime, timedelta
from functools import reduce
from operator import or_
from typing import Any

import orjson
from django.conf import settings
from django.db import transaction
from django.db.models import F, Q

from carts.models import CartAbandonment, CartCheck, CartPurchase
from carts.webhooks import DeliveryResult, webhook_post
from cloudscale_project.metrics import platform_incr
from cloudscale_project.timeutil import isoformat_z, parse_iso, utcnow
from tenants.models import Tenant

logger = logging.getLogger(__name__)

# Due checks fired per transaction; beat runs every 30 s, so this bounds one run, not throughput.
FIRE_BATCH = 500
# Purchases per cancelling UPDATE (one OR-ed condition each).
_CANCEL_CHUNK = 100
# Webhooks claimed per run, posted by this many threads (5 s timeout each: a run stays < 1 min).
DELIVERY_BATCH = 50
DELIVERY_THREADS = 8
WEBHOOK_MAX_ATTEMPTS = 6
WEBHOOK_BACKOFF_BASE_SECONDS = 30.0
WEBHOOK_BACKOFF_MAX_SECONDS = 3600.0
# Longer than the worst run (DELIVERY_BATCH / DELIVERY_THREADS x timeout); past it the sender is gone.
WEBHOOK_LEASE_SECONDS = 300
WEBHOOK_EVENT = "cart.abandoned"
# Purchases only matter to checks due soon after them (<= 30 min + a 23 h future clamp).
PURCHASE_KEEP = timedelta(days=2)


def cart_events_record(*, tenant: str, events: Sequence[dict[str, Any]]) -> None:
    """Schedule a check per add_to_cart, record purchases and cancel what they cover (idempotent)."""
    delay = timedelta(minutes=settings.CART_ABANDONMENT_MINUTES)
    checks: list[CartCheck] = []
    purchases: list[CartPurchase] = []
    for event in events:
        if event["event_type"] == "add_to_cart":
            added_at = parse_iso(event["timestamp"])
            checks.append(
                CartCheck(
                    tenant=tenant,
                    event_id=str(event["event_id"]),
                    user_id=str(event["user_id"]),
                    session_id=str(event.get("session_id") or ""),
                    properties=event.get("properties") or {},
                    added_at=added_at,
                    due_at=added_at + delay,
                )
            )
        elif event["event_type"] == "purchase":
            purchases.append(
                CartPurchase(
                    tenant=tenant,
                    event_id=str(event["event_id"]),
                    user_id=str(event["user_id"]),
                    purchased_at=parse_iso(event["timestamp"]),
                )
            )
    if not checks and not purchases:
        return
    with transaction.atomic():
        CartCheck.objects.bulk_create(checks, ignore_conflicts=True)
        CartPurchase.objects.bulk_create(purchases, ignore_conflicts=True)
        now = utcnow()
        for start in range(0, len(purchases), _CANCEL_CHUNK):
            covered = reduce(
                or_,
                (
                    Q(user_id=p.user_id, added_at__lte=p.purchased_at, due_at__gt=p.purchased_at)
                    for p in purchases[start : start + _CANCEL_CHUNK]
                ),
            )
            CartCheck.objects.filter(covered, tenant=tenant, status=CartCheck.Status.PENDING).update(
                status=CartCheck.Status.CANCELLED, resolved_at=now
            )


def _purchase_times(checks: Sequence[CartCheck]) -> dict[tuple[str, str], list[datetime]]:
    times: dict[tuple[str, str], list[datetime]] = defaultdict(list)
    rows = CartPurchase.objects.filter(
        tenant__in={c.tenant for c in checks},
        user_id__in={c.user_id for c in checks},
        purchased_at__gte=min(c.added_at for c in checks),
        purchased_at__lt=max(c.due_at for c in checks),
    ).values_list("tenant", "user_id", "purchased_at")
    for tenant, user_id, purchased_at in rows:
        times[(tenant, user_id)].append(purchased_at)
    return times


def _payload(check: CartCheck, detected_at: datetime) -> dict[str, Any]:
    props = check.properties if isinstance(check.properties, dict) else {}
    return {
        "type": WEBHOOK_EVENT,
        "tenant": check.tenant,
        "cart_id": check.event_id,
        "user_id": check.user_id,
        "session_id": check.session_id or None,
        "product_id": props.get("product_id"),
        "quantity": props.get("quantity"),
        "price": props.get("price"),
        "added_at": isoformat_z(check.added_at),
        "due_at": isoformat_z(check.due_at),
        "detected_at": isoformat_z(detected_at),
    }


def cart_checks_fire(*, now: datetime | None = None, limit: int = FIRE_BATCH) -> list[CartAbandonment]:
    """Resolve due checks: cancelled if a purchase covers them, else one CartAbandonment each."""
    now = now or utcnow()
    with transaction.atomic():
        # PostgreSQL: overlapping runs skip each other's rows. SQLite: the IMMEDIATE transaction
        # already holds the write lock, so the second run sees these checks resolved.
        checks = list(
            CartCheck.objects.select_for_update(skip_locked=True)
            .filter(status=CartCheck.Status.PENDING, due_at__lte=now)
            .order_by("due_at", "pk")[:limit]
        )
        if not checks:
            return []
        purchases = _purchase_times(checks)
        cancelled: list[int] = []
        fired: list[CartCheck] = []
        for check in checks:
            times = purchases.get((check.tenant, check.user_id), [])
            if any(check.added_at <= t < check.due_at for t in times):
                cancelled.append(check.pk)
            else:
                fired.append(check)
        CartCheck.objects.filter(pk__in=cancelled).update(status=CartCheck.Status.CANCELLED, resolved_at=now)
        CartCheck.objects.filter(pk__in=[c.pk for c in fired]).update(
            status=CartCheck.Status.FIRED, resolved_at=now
        )
        urls = dict(
            Tenant.objects.filter(slug__in={c.tenant for c in fired}).values_list("slug", "webhook_url")
        )
        abandonments = [
            CartAbandonment(
                tenant=check.tenant,
                cart_event_id=check.event_id,
                user_id=check.user_id,
                added_at=check.added_at,
                due_at=check.due_at,
                created_at=now,
                payload=_payload(check, now),
                webhook_url=urls.get(check.tenant, ""),
                webhook_status=(
                    CartAbandonment.Webhook.PENDING
                    if urls.get(check.tenant)
                    else CartAbandonment.Webhook.NONE
                ),
                next_attempt_at=now if urls.get(check.tenant) else None,
            )
            for check in fired
        ]
        CartAbandonment.objects.bulk_create(abandonments, ignore_conflicts=True)
    if fired:
        platform_incr("cloudscale_cart_abandonments_total", {}, len(fired))
    for check in fired:
        logger.info(
            "cart abandoned user=%s cart=%s added_at=%s",
            check.user_id,
            check.event_id,
            isoformat_z(check.added_at),
            extra={"tenant": check.tenant, "event_id": check.event_id},
        )
    return abandonments


def _backoff(attempts: int) -> timedelta:
    """Exponential with ±20 % jitter, so receivers coming back are not hit by every retry at once."""
    base = min(WEBHOOK_BACKOFF_MAX_SECONDS, WEBHOOK_BACKOFF_BASE_SECONDS * 2 ** max(0, attempts - 1))
    return timedelta(seconds=base * random.uniform(0.8, 1.2))  # noqa: S311 - jitter, not security


def cart_webhooks_deliver(*, now: datetime | None = None, limit: int = DELIVERY_BATCH) -> int:
    """Post the abandonment webhooks that are due; return how many were delivered."""
    now = now or utcnow()
    _webhooks_expire_leases(now=now)
    token = uuid.uuid4().hex
    due = list(
        CartAbandonment.objects.filter(
            webhook_status=CartAbandonment.Webhook.PENDING, next_attempt_at__lte=now
        )
        .order_by("next_attempt_at", "pk")
        .values_list("pk", flat=True)[:limit]
    )
    if not due:
        return 0
    # The conditional update is the claim: only rows still pending take my token.
    CartAbandonment.objects.filter(pk__in=due, webhook_status=CartAbandonment.Webhook.PENDING).update(
        webhook_status=CartAbandonment.Webhook.SENDING,
        claim=token,
        lease_until=now + timedelta(seconds=WEBHOOK_LEASE_SECONDS),
        webhook_attempts=F("webhook_attempts") + 1,
    )
    claimed = list(
        CartAbandonment.objects.filter(claim=token, webhook_status=CartAbandonment.Webhook.SENDING)
    )
    if not claimed:
        return 0
    secrets = dict(
        Tenant.objects.filter(slug__in={a.tenant for a in claimed}).values_list("slug", "webhook_secret")
    )
    with ThreadPoolExecutor(max_workers=min(DELIVERY_THREADS, len(claimed))) as pool:
        results = list(pool.map(lambda a: _post(a, secrets.get(a.tenant, "")), claimed))
    delivered = 0
    for abandonment, result in zip(claimed, results, strict=True):
        delivered += _delivery_record(abandonment=abandonment, result=result, token=token, now=now)
    return delivered


def _post(abandonment: CartAbandonment, secret: str) -> DeliveryResult:
    if not secret:
        return DeliveryResult(
            False, None, "the tenant has no webhook secret: not sent unsigned", permanent=True
        )
    return webhook_post(
        url=abandonment.webhook_url,
        secret=secret,
        body=orjson.dumps(abandonment.payload),
        delivery_id=abandonment.cart_event_id,
        event=WEBHOOK_EVENT,
    )


def _delivery_record(
    *, abandonment: CartAbandonment, result: DeliveryResult, token: str, now: datetime
) -> int:
    mine_q = CartAbandonment.objects.filter(pk=abandonment.pk, claim=token)
    extra = {"tenant": abandonment.tenant, "event_id": abandonment.cart_event_id}
    if result.ok:
        mine_q.update(
            webhook_status=CartAbandonment.Webhook.DELIVERED,
            delivered_at=utcnow(),
            response_status=result.status,
            last_error="",
            lease_until=None,
        )
        logger.info(
            "cart webhook delivered cart=%s status=%s", abandonment.cart_event_id, result.status, extra=extra
        )
        return 1
    give_up = result.permanent or abandonment.webhook_attempts >= WEBHOOK_MAX_ATTEMPTS
    mine_q.update(
        webhook_status=CartAbandonment.Webhook.FAILED if give_up else CartAbandonment.Webhook.PENDING,
        next_attempt_at=None if give_up else now + _backoff(abandonment.webhook_attempts),
        response_status=result.status,
        last_error=result.error,
        lease_until=None,
    )
    logger.warning(
        "cart webhook attempt %d failed cart=%s: %s%s",
        abandonment.webhook_attempts,
        abandonment.cart_event_id,
        result.error,
        " (giving up)" if give_up else "",
        extra=extra,
    )
    return 0


_UNKNOWN_OUTCOME = (
    "outcome unknown: the sender stopped while posting; not re-sent automatically (retry in admin)"
)


def _webhooks_expire_leases(*, now: datetime) -> None:
    """A claim past its lease belongs to a sender that died mid-POST: the outcome is unknown."""
    expired = CartAbandonment.objects.filter(
        webhook_status=CartAbandonment.Webhook.SENDING, lease_until__lte=now
    )
    count = expired.update(
        webhook_status=CartAbandonment.Webhook.FAILED,
        last_error=_UNKNOWN_OUTCOME,
        lease_until=None,
    )
    if count:
        logger.warning("%d cart webhook(s) left mid-delivery marked failed", count)


def cart_webhooks_retry(*, ids: Iterable[int]) -> int:
    """Operator action: send failed webhooks again (a new round of attempts) to the tenant's current URL.

    Rows of tenants without a webhook URL stay failed: there is nowhere to send them.
    """
    failed = CartAbandonment.objects.filter(pk__in=list(ids), webhook_status=CartAbandonment.Webhook.FAILED)
    urls = Tenant.objects.filter(slug__in=failed.values("tenant")).exclude(webhook_url="")
    retried = 0
    for slug, url in urls.values_list("slug", "webhook_url"):
        retried += failed.filter(tenant=slug).update(
            webhook_status=CartAbandonment.Webhook.PENDING,
            webhook_url=url,
            next_attempt_at=utcnow(),
            webhook_attempts=0,
            last_error="",
        )
    return retried


def cart_state_purge(*, now: datetime | None = None) -> int:
    """Forget purchases no check can need any more and resolved checks past the retention period."""
    now = now or utcnow()
    purchases, _ = CartPurchase.objects.filter(recorded_at__lt=now - PURCHASE_KEEP).delete()
    checks, _ = (
        CartCheck.objects.exclude(status=CartCheck.Status.PENDING)
        .filter(resolved_at__lt=now - timedelta(days=settings.EVENT_RETENTION_DAYS))
        .delete()
    )
    return purchases + checks
