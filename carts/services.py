"""Cart abandonment (docs/api.md, "Cart abandonment"): scheduled in the database, fired by beat.

- The actions step records every add_to_cart as a CartCheck due CART_ABANDONMENT_MINUTES of event
  time later, and every purchase as a CartPurchase that cancels the user's pending checks with
  added_at <= purchase time < due_at.
- Beat calls `cart_checks_fire`: due checks (due_at <= wall clock) are checked once more against the
  recorded purchases — that covers a purchase processed concurrently with, or before, its
  add_to_cart — and each one left becomes exactly one CartAbandonment (the check's status change
  and the unique cart id decide it, so two overlapping beat runs cannot both fire a cart).
- `cart_webhooks_deliver` POSTs each abandonment's signed payload when the tenant has a webhook URL
  and is active. A sender first claims the row (conditional update tagged with its token), so two
  senders never post the same cart; a failed POST is retried with exponential backoff. Each tenant's
  deliveries of a run go one after another in a lane of their own, lanes run side by side, and every
  POST has a total deadline: a slow receiver delays only its own tenant's webhooks.
- An unknown outcome (the request went out, no answer came back: deadline, reset, or a sender that
  died while posting) is retried only for a tenant whose receiver deduplicates by
  `X-CloudScale-Delivery` (`Tenant.settings["webhook_receiver_deduplicates"] = true`); for the others
  it is marked failed rather than re-sent (an operator can retry it from admin): never twice for the
  same cart without someone deciding so.
"""

from __future__ import annotations

import logging
import random
import time
import uuid
from collections import defaultdict
from collections.abc import Iterable, Sequence
from concurrent.futures import ThreadPoolExecutor
from datetime import datetime, timedelta
from typing import Any

import orjson
from django.conf import settings
from django.db import connection, transaction
from django.db.models import F, Min, Model

from carts.models import CART_CHECK_USER_INDEX, CartAbandonment, CartCheck, CartPurchase
from carts.webhooks import DeliveryResult, webhook_post
from cloudscale_project.dbtime import db_time, db_time_after
from cloudscale_project.metrics import platform_incr
from cloudscale_project.rawsql import SqlCursor, bulk_cursor, insert_rows
from cloudscale_project.timeutil import isoformat_z, utcnow
from tenants.models import Tenant

logger = logging.getLogger(__name__)

# Due checks fired per transaction; beat runs every 30 s, so this bounds one run, not throughput.
FIRE_BATCH = 500
# Purchases per cancelling UPDATE (one OR-ed condition each).
_CANCEL_CHUNK = 100
# Rows per INSERT: 500 x 10 columns, well under SQLite's 32,766 bound parameters.
_INSERT_ROWS = 500
# Every column of the tables but the id, in the order of the rows cart_events_record builds.
_CHECK_FIELDS = (
    "tenant", "event_id", "user_id", "session_id", "properties", "added_at", "due_at", "status",
    "created_at", "resolved_at",
)  # fmt: skip
_PURCHASE_FIELDS = ("tenant", "event_id", "user_id", "purchased_at", "recorded_at")
_PURCHASE_USER = _PURCHASE_FIELDS.index("user_id")
_PURCHASE_AT = _PURCHASE_FIELDS.index("purchased_at")
# Webhooks claimed per run, at most DELIVERY_PER_TENANT of one tenant, posted by DELIVERY_THREADS
# tenant lanes at once. Each POST ends within settings.WEBHOOK_DEADLINE_SECONDS (10 s).
DELIVERY_BATCH = 200
DELIVERY_PER_TENANT = 50
DELIVERY_THREADS = 8
# A lane starts no new POST after this long (a receiver that answers just inside the deadline
# every time); a run starts none after RUN_BUDGET. Left-over rows go back to pending, unattempted.
# Worst run: RUN_BUDGET + LANE_BUDGET + one deadline = 75 s, under the task's 90 s soft limit.
LANE_BUDGET_SECONDS = 20.0
RUN_BUDGET_SECONDS = 45.0
# The tenant's receiver drops repeats by X-CloudScale-Delivery: an unknown outcome may be resent.
RECEIVER_DEDUPLICATES = "webhook_receiver_deduplicates"
WEBHOOK_MAX_ATTEMPTS = 6
WEBHOOK_BACKOFF_BASE_SECONDS = 30.0
WEBHOOK_BACKOFF_MAX_SECONDS = 3600.0
# Longer than the worst run (DELIVERY_BATCH / DELIVERY_THREADS x timeout); past it the sender is gone.
WEBHOOK_LEASE_SECONDS = 300
WEBHOOK_EVENT = "cart.abandoned"
# Purchases only matter to checks due soon after them (<= 30 min + a 23 h future clamp).
PURCHASE_KEEP = timedelta(days=2)


def cart_events_record(*, tenant: str, events: Sequence[dict[str, Any]]) -> None:
    """Schedule a check per add_to_cart, record purchases and cancel what they cover (idempotent).

    Raw SQL with the values as the columns take them (cloudscale_project/dbtime.py), as the event
    store writes: building model instances, parsing every time and Django's per-value query
    building were most of this step's CPU. The rows are those bulk_create(ignore_conflicts=True)
    wrote, so a redelivered batch inserts nothing and finds its checks already cancelled.
    """
    delay = timedelta(minutes=settings.CART_ABANDONMENT_MINUTES)
    now = connection.ops.adapt_datetimefield_value(utcnow())
    pending = CartCheck.Status.PENDING.value
    checks: list[tuple[Any, ...]] = []
    purchases: list[tuple[Any, ...]] = []
    for event in events:
        event_type = event["event_type"]
        if event_type == "add_to_cart":
            timestamp = event["timestamp"]
            checks.append(
                (
                    tenant,
                    str(event["event_id"]),
                    str(event["user_id"]),
                    str(event.get("session_id") or ""),
                    orjson.dumps(event.get("properties") or {}).decode(),
                    db_time(timestamp),
                    db_time_after(timestamp, delay),
                    pending,
                    now,
                    None,
                )
            )
        elif event_type == "purchase":
            purchases.append(
                (tenant, str(event["event_id"]), str(event["user_id"]), db_time(event["timestamp"]), now)
            )
    if not checks and not purchases:
        return
    with transaction.atomic(), bulk_cursor() as cursor:
        _rows_insert(cursor, CartCheck, _CHECK_FIELDS, checks)
        _rows_insert(cursor, CartPurchase, _PURCHASE_FIELDS, purchases)
        for start in range(0, len(purchases), _CANCEL_CHUNK):
            chunk = purchases[start : start + _CANCEL_CHUNK]
            cursor.execute(*checks_cancel_statement(tenant=tenant, purchases=chunk, now=now))


def _rows_insert(
    cursor: SqlCursor, model: type[Model], fields: Sequence[str], rows: Sequence[tuple[Any, ...]]
) -> None:
    """INSERT … ON CONFLICT DO NOTHING, what bulk_create(ignore_conflicts=True) sends."""
    for start in range(0, len(rows), _INSERT_ROWS):
        chunk = rows[start : start + _INSERT_ROWS]
        cursor.execute(*insert_rows(model, fields, chunk, suffix="ON CONFLICT DO NOTHING"))


def checks_cancel_statement(
    *, tenant: str, purchases: Sequence[tuple[Any, ...]], now: Any
) -> tuple[str, list[Any]]:
    """The UPDATE that cancels the users' pending checks with added_at <= purchased_at < due_at,
    for each of `purchases`, and its parameters.

    It must search the (tenant, user_id, status) index: a purchase cancels its own user's few
    checks. The redundant `user_id IN (…)` lets the planner use that index under the OR. On SQLite
    the statement also names the index (`INDEXED BY`): SQLite keeps no statistics unless told to,
    and for a lone purchase its planner took the (status, due_at) index instead, for
    `status = 'pending' AND due_at > purchased_at`, which walks every pending check that falls due
    after the purchase: every check of the last half hour. On tables a bench had aged (150,000
    events) that UPDATE read 7,270 pages and cost 18 ms of a worker's CPU (docs/decisions.md,
    "Cancelling a cart's checks names its index"). PostgreSQL plans from the statistics it keeps.
    """
    quote = connection.ops.quote_name
    table = quote(CartCheck._meta.db_table)
    if connection.vendor == "sqlite":
        table += f" INDEXED BY {quote(CART_CHECK_USER_INDEX)}"
    tenant_, user, added, due, status, resolved = (
        _column(CartCheck, name)
        for name in ("tenant", "user_id", "added_at", "due_at", "status", "resolved_at")
    )
    users = sorted({purchase[_PURCHASE_USER] for purchase in purchases})
    params: list[Any] = [
        CartCheck.Status.CANCELLED.value,
        now,
        tenant,
        CartCheck.Status.PENDING.value,
        *users,
    ]
    for purchase in purchases:
        params += [purchase[_PURCHASE_USER], purchase[_PURCHASE_AT], purchase[_PURCHASE_AT]]
    covered = " OR ".join([f"({user} = %s AND {added} <= %s AND {due} > %s)"] * len(purchases))
    sql = (
        f"UPDATE {table} SET {status} = %s, {resolved} = %s "  # noqa: S608 - names are ours, values are parameters
        f"WHERE {tenant_} = %s AND {status} = %s AND {user} IN ({', '.join(['%s'] * len(users))}) "
        f"AND ({covered})"
    )
    return sql, params


def _column(model: type[Model], name: str) -> str:
    """The quoted column of a concrete field (a KeyError for anything else)."""
    columns = {field.name: field.column for field in model._meta.concrete_fields}
    return connection.ops.quote_name(str(columns[name]))


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
        # A disabled tenant gets no webhooks: its abandonments are recorded without one.
        urls = dict(
            Tenant.objects.filter(slug__in={c.tenant for c in fired}, active=True).values_list(
                "slug", "webhook_url"
            )
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


def _due_fairly(*, now: datetime, limit: int) -> list[int]:
    """Due rows, at most DELIVERY_PER_TENANT per tenant, tenants with the oldest due row first: one
    tenant's backlog cannot fill a run."""
    due = CartAbandonment.objects.filter(
        webhook_status=CartAbandonment.Webhook.PENDING, next_attempt_at__lte=now
    )
    tenants = (
        due.values("tenant")
        .annotate(oldest=Min("next_attempt_at"))
        .order_by("oldest")
        .values_list("tenant", flat=True)
    )
    picked: list[int] = []
    for tenant in tenants[:limit]:
        room = min(DELIVERY_PER_TENANT, limit - len(picked))
        if room <= 0:
            break
        picked += (
            due.filter(tenant=tenant).order_by("next_attempt_at", "pk").values_list("pk", flat=True)[:room]
        )
    return picked


def cart_webhooks_deliver(*, now: datetime | None = None, limit: int = DELIVERY_BATCH) -> int:
    """Post the abandonment webhooks that are due; return how many were delivered."""
    now = now or utcnow()
    started = time.monotonic()
    _webhooks_expire_leases(now=now)
    token = uuid.uuid4().hex
    due = _due_fairly(now=now, limit=limit)
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
        CartAbandonment.objects.filter(claim=token, webhook_status=CartAbandonment.Webhook.SENDING).order_by(
            "next_attempt_at", "pk"
        )
    )
    if not claimed:
        return 0
    tenants = {t.slug: t for t in Tenant.objects.filter(slug__in={a.tenant for a in claimed})}
    lanes: dict[str, list[CartAbandonment]] = defaultdict(list)
    for abandonment in claimed:
        lanes[abandonment.tenant].append(abandonment)

    def run_lane(rows: list[CartAbandonment]) -> list[tuple[CartAbandonment, DeliveryResult | None]]:
        lane_started = time.monotonic()
        done: list[tuple[CartAbandonment, DeliveryResult | None]] = []
        for abandonment in rows:
            out_of_time = (
                time.monotonic() - started > RUN_BUDGET_SECONDS
                or time.monotonic() - lane_started > LANE_BUDGET_SECONDS
            )
            # After a POST without an answer the receiver is unwell: the rest waits for the next run.
            receiver_stuck = any(r is not None and r.unknown for _, r in done)
            if out_of_time or receiver_stuck:
                done.append((abandonment, None))
            else:
                done.append((abandonment, _post(abandonment, tenants.get(abandonment.tenant))))
        return done

    with ThreadPoolExecutor(max_workers=min(DELIVERY_THREADS, len(lanes))) as pool:
        outcomes = [pair for lane in pool.map(run_lane, lanes.values()) for pair in lane]
    delivered = 0
    for abandonment, result in outcomes:
        tenant = tenants.get(abandonment.tenant)
        if result is None:
            _delivery_release(abandonment=abandonment, token=token)
        else:
            delivered += _delivery_record(
                abandonment=abandonment,
                result=result,
                token=token,
                now=now,
                resend_unknown=_deduplicates(tenant),
            )
    return delivered


def _deduplicates(tenant: Tenant | None) -> bool:
    return (
        tenant is not None
        and isinstance(tenant.settings, dict)
        and tenant.settings.get(RECEIVER_DEDUPLICATES) is True
    )


def _post(abandonment: CartAbandonment, tenant: Tenant | None) -> DeliveryResult:
    if tenant is None or not tenant.active:
        return DeliveryResult(False, None, _DISABLED, permanent=True)
    if not tenant.webhook_secret:
        return DeliveryResult(
            False, None, "the tenant has no webhook secret: not sent unsigned", permanent=True
        )
    return webhook_post(
        url=abandonment.webhook_url,
        secret=tenant.webhook_secret,
        body=orjson.dumps(abandonment.payload),
        delivery_id=abandonment.cart_event_id,
        event=WEBHOOK_EVENT,
    )


def _delivery_release(*, abandonment: CartAbandonment, token: str) -> None:
    """A claimed row this run did not get to: pending again, due now, the attempt not counted."""
    CartAbandonment.objects.filter(pk=abandonment.pk, claim=token).update(
        webhook_status=CartAbandonment.Webhook.PENDING,
        webhook_attempts=F("webhook_attempts") - 1,
        lease_until=None,
    )


def _delivery_record(
    *, abandonment: CartAbandonment, result: DeliveryResult, token: str, now: datetime, resend_unknown: bool
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
    give_up = (
        result.permanent
        or (result.unknown and not resend_unknown)
        or abandonment.webhook_attempts >= WEBHOOK_MAX_ATTEMPTS
    )
    error = result.error
    if result.unknown and not resend_unknown:
        error += "; not re-sent automatically: the receiver does not deduplicate (retry in admin)"
    mine_q.update(
        webhook_status=CartAbandonment.Webhook.FAILED if give_up else CartAbandonment.Webhook.PENDING,
        next_attempt_at=None if give_up else now + _backoff(abandonment.webhook_attempts),
        response_status=result.status,
        last_error=error[:_LAST_ERROR_LIMIT],
        lease_until=None,
    )
    logger.warning(
        "cart webhook attempt %d failed cart=%s: %s%s",
        abandonment.webhook_attempts,
        abandonment.cart_event_id,
        error,
        " (giving up)" if give_up else "",
        extra=extra,
    )
    return 0


_LAST_ERROR_LIMIT = 1000
_DISABLED = "the tenant is disabled: no webhooks (retry in admin once it is enabled)"
_UNKNOWN_OUTCOME = (
    "outcome unknown: the sender stopped while posting; not re-sent automatically (retry in admin)"
)


def _webhooks_expire_leases(*, now: datetime) -> None:
    """A claim past its lease belongs to a sender that died mid-POST: the outcome is unknown.
    Resent (as a new attempt) where the receiver deduplicates, marked failed elsewhere."""
    expired = CartAbandonment.objects.filter(
        webhook_status=CartAbandonment.Webhook.SENDING, lease_until__lte=now
    )
    deduplicating = [
        slug
        for slug, tenant_settings in Tenant.objects.filter(
            slug__in=expired.values("tenant"), active=True
        ).values_list("slug", "settings")
        if isinstance(tenant_settings, dict) and tenant_settings.get(RECEIVER_DEDUPLICATES) is True
    ]
    resent = expired.filter(tenant__in=deduplicating).update(
        webhook_status=CartAbandonment.Webhook.PENDING,
        next_attempt_at=now,
        last_error="outcome unknown: the sender stopped while posting; resent (the receiver deduplicates)",
        lease_until=None,
    )
    count = expired.update(
        webhook_status=CartAbandonment.Webhook.FAILED,
        last_error=_UNKNOWN_OUTCOME,
        lease_until=None,
    )
    if count or resent:
        logger.warning("cart webhook(s) left mid-delivery: %d marked failed, %d resent", count, resent)


def cart_webhooks_retry(*, ids: Iterable[int]) -> int:
    """Operator action: send failed webhooks again (a new round of attempts) to the tenant's current URL.

    Rows of tenants without a webhook URL, or disabled, stay failed: there is nowhere to send them.
    """
    failed = CartAbandonment.objects.filter(pk__in=list(ids), webhook_status=CartAbandonment.Webhook.FAILED)
    urls = Tenant.objects.filter(slug__in=failed.values("tenant"), active=True).exclude(webhook_url="")
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
