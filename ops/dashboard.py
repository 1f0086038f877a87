"""Selectors of the admin's overview page: each returns one panel's JSON (charts and their numbers).

Read-only, per tenant or over all tenants (`tenant=None`), over the last `hours` hours ending with
the current hour. Every series has one value per hour (or per beat sample), zeros included, so a
chart's points line up with its labels and with `/api/ledger`'s hours.
"""

from __future__ import annotations

from collections import defaultdict
from datetime import datetime, timedelta
from typing import Any

from django.apps import apps
from django.db.models import Count, Model
from django.db.models.functions import TruncHour
from django.utils import timezone

from cloudscale_project.timeutil import hour_floor, isoformat_z
from ops.models import ConcurrencyChange, PlatformSample

DEFAULT_HOURS = 24
MAX_HOURS = 24 * 7
LEDGER_SERIES = ("accepted", "duplicate", "rejected", "rate_limited", "stored", "dead_lettered", "pending")
WARNINGS_LIMIT = 20
# The SDK-compatibility app's model; that app is optional here (the panel is empty without it).
WARNINGS_APP, WARNINGS_MODEL = "compat", "IngestionWarning"


def _hour_label(hour: datetime) -> str:
    return isoformat_z(hour).replace(".000000Z", "Z")


def _hours(now: datetime, hours: int) -> list[datetime]:
    last = hour_floor(now)
    return [last - timedelta(hours=n) for n in range(hours - 1, -1, -1)]


def dashboard_tenants() -> list[str]:
    from tenants.models import Tenant

    return list(Tenant.objects.order_by("slug").values_list("slug", flat=True))


def dashboard_ledger(
    *, tenant: str | None, hours: int = DEFAULT_HOURS, now: datetime | None = None
) -> dict[str, Any]:
    """The loss ledger per hour of arrival (the numbers of `/api/ledger`, summed over tenants)."""
    from events.ledger import FIELDS, ledger_report

    now = now or timezone.now()
    slots = _hours(now, hours)
    labels = [_hour_label(h) for h in slots]
    index = {label: i for i, label in enumerate(labels)}
    series = {name: [0] * len(slots) for name in FIELDS}
    totals = dict.fromkeys(FIELDS, 0)
    for slug in [tenant] if tenant else dashboard_tenants():
        report = ledger_report(tenant=slug, since=slots[0], until=slots[-1] + timedelta(hours=1))
        for row in report["results"]:  # type: ignore[attr-defined]
            i = index.get(row["hour"])
            if i is None:
                continue
            for name in FIELDS:
                series[name][i] += int(row[name])
                totals[name] += int(row[name])
    return {"tenant": tenant, "hours": labels, "series": series, "totals": totals}


def dashboard_platform(*, hours: int = DEFAULT_HOURS, now: datetime | None = None) -> dict[str, Any]:
    """Beat's samples (queue depth, concurrency target, pool size) and the target's changes."""
    now = now or timezone.now()
    since = now - timedelta(hours=hours)
    samples = list(PlatformSample.objects.filter(sampled_at__gte=since).order_by("sampled_at", "id"))
    changes = ConcurrencyChange.objects.filter(changed_at__gte=since).order_by("-changed_at", "-id")[:50]
    latest = samples[-1] if samples else None
    return {
        "times": [isoformat_z(s.sampled_at) for s in samples],
        "queue_depth": [s.queue_depth for s in samples],
        "concurrency_target": [s.concurrency_target for s in samples],
        "pool_processes": [s.pool_processes for s in samples],
        "current": {
            "sampled_at": isoformat_z(latest.sampled_at) if latest else None,
            "queue_depth": latest.queue_depth if latest else None,
            "concurrency_target": latest.concurrency_target if latest else None,
            "pool_processes": latest.pool_processes if latest else None,
            "workers_alive": latest.workers_alive if latest else None,
            "max_queue_depth": max((s.queue_depth for s in samples), default=None),
        },
        "changes": [
            {
                "changed_at": isoformat_z(c.changed_at),
                "queue_depth": c.queue_depth,
                "old_target": c.old_target,
                "new_target": c.new_target,
                "reason": c.reason,
            }
            for c in changes
        ],
    }


def _by_hour_and(rows: Any, slots: list[datetime], key: str) -> tuple[dict[str, list[int]], dict[str, int]]:
    labels = {_hour_label(h): i for i, h in enumerate(slots)}
    series: dict[str, list[int]] = defaultdict(lambda: [0] * len(slots))
    totals: dict[str, int] = defaultdict(int)
    for row in rows:
        i = labels.get(_hour_label(row["hour"]))
        if i is not None:
            series[row[key]][i] += row["n"]
            totals[row[key]] += row["n"]
    return dict(sorted(series.items())), dict(sorted(totals.items()))


def dashboard_dead_letters(
    *, tenant: str | None, hours: int = DEFAULT_HOURS, now: datetime | None = None
) -> dict[str, Any]:
    """Dead letters by reason per hour first seen, and what is pending review by reason."""
    from events.models import DeadLetter

    now = now or timezone.now()
    slots = _hours(now, hours)
    rows = DeadLetter.objects.filter(first_seen__gte=slots[0])
    pending = DeadLetter.objects.filter(status=DeadLetter.Status.PENDING)
    if tenant:
        rows, pending = rows.filter(tenant=tenant), pending.filter(tenant=tenant)
    per_hour = rows.annotate(hour=TruncHour("first_seen")).values("hour", "reason").annotate(n=Count("id"))
    series, totals = _by_hour_and(per_hour, slots, "reason")
    pending_by_reason = dict(pending.values_list("reason").annotate(n=Count("id")).order_by("reason"))
    return {
        "tenant": tenant,
        "hours": [_hour_label(h) for h in slots],
        "series": series,
        "totals": totals,
        "pending_by_reason": pending_by_reason,
    }


def dashboard_fraud(
    *, tenant: str | None, hours: int = DEFAULT_HOURS, now: datetime | None = None
) -> dict[str, Any]:
    """Fraud alerts by rule (raised in the period), per hour and in total."""
    from fraud.models import FraudAlert
    from fraud.rules import Rule

    now = now or timezone.now()
    slots = _hours(now, hours)
    rows = FraudAlert.objects.filter(created_at__gte=slots[0])
    if tenant:
        rows = rows.filter(tenant=tenant)
    per_hour = rows.annotate(hour=TruncHour("created_at")).values("hour", "rule").annotate(n=Count("id"))
    series, totals = _by_hour_and(per_hour, slots, "rule")
    return {
        "tenant": tenant,
        "hours": [_hour_label(h) for h in slots],
        "rules": [rule.value for rule in Rule],
        "by_rule": {rule.value: totals.get(rule.value, 0) for rule in Rule},
        "series": series,
    }


def _warning_model() -> type[Model] | None:
    """The SDK-compatibility app's warnings, if that app is installed (it is optional here)."""
    if not apps.is_installed(WARNINGS_APP):
        return None
    app_label, model_name = WARNINGS_APP, WARNINGS_MODEL  # not literals: the model may not exist
    try:
        return apps.get_model(app_label, model_name)
    except LookupError:
        return None


def dashboard_warnings(*, tenant: str | None, limit: int = WARNINGS_LIMIT) -> dict[str, Any]:
    """The newest ingestion warnings; `available` is False (and the list empty) without the app."""
    model = _warning_model()
    if model is None:
        return {"available": False, "columns": [], "results": []}
    fields = [f for f in model._meta.concrete_fields if f.name != "id"]
    rows = model._default_manager.all()
    if tenant and any(f.name == "tenant" for f in fields):
        rows = rows.filter(tenant=tenant)
    results = []
    for obj in rows.order_by("-pk")[:limit]:
        results.append({f.name: _plain(f.value_from_object(obj)) for f in fields})
    return {"available": True, "columns": [f.name for f in fields], "results": results}


def _plain(value: Any) -> Any:
    if isinstance(value, datetime):
        return isoformat_z(value)
    if value is None or isinstance(value, (bool, int, float, str, list, dict)):
        return value
    return str(value)
