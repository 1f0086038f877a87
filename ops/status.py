"""`manage.py status`: what an operator asks first, in one report (selectors only, no writes).

Every part is gathered even when another fails, so one report shows everything that is down.
`status_problems` turns the report into the reasons for a non-zero exit (cron, monitoring).
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from datetime import datetime, timedelta
from itertools import pairwise
from typing import Any

from django.conf import settings
from django.db.models import Count
from django.utils import timezone

from cloudscale_project.state import state_redis
from cloudscale_project.timeutil import isoformat_z
from ops.autoscale import concurrency_tier
from ops.health import readiness
from ops.heartbeat import workers_alive
from ops.models import PlatformSample
from ops.queue_depth import oldest_message_age, queue_depth
from ops.services import concurrency_target_get

logger = logging.getLogger(__name__)

# "Pending keeps growing": the queue depth rose over this many consecutive beat samples (2 minutes
# at 30 s) while the ledger shows accepted events not yet stored or dead-lettered.
GROWTH_SAMPLES = 4
# Beat samples every QUEUE_DEPTH_SAMPLE_SECONDS; three missed samples mean beat is not running.
MISSED_SAMPLES = 3
# A waiting message older than this is a stuck queue even if the depth is flat (the visibility
# timeout: by then a lost worker's messages are back in the queue too).
DEFAULT_MAX_AGE_SECONDS = 600.0


def _attempt(report: dict[str, Any], key: str, errors: dict[str, str], fn: Callable[[], Any]) -> None:
    try:
        report[key] = fn()
    except Exception as exc:  # a status report names what failed instead of failing itself
        report[key] = None
        errors[key] = f"{type(exc).__name__}: {exc}"[:300]


def _check_shared_state() -> None:
    state_redis().ping()


def _last_hour(now: datetime) -> dict[str, int]:
    """Ledger totals over every tenant, for the hours of arrival overlapping the last 60 minutes."""
    from events.ledger import FIELDS, ledger_report
    from tenants.models import Tenant

    totals = dict.fromkeys(FIELDS, 0)
    for slug in Tenant.objects.values_list("slug", flat=True):
        report = ledger_report(tenant=slug, since=now - timedelta(hours=1), until=now)
        for name, value in report["totals"].items():  # type: ignore[attr-defined]
            totals[name] += int(value)
    return totals


def _dead_letters_by_reason() -> dict[str, int]:
    from events.models import DeadLetter

    rows = (
        DeadLetter.objects.filter(status=DeadLetter.Status.PENDING)
        .values("reason")
        .annotate(n=Count("id"))
        .order_by("reason")
    )
    return {row["reason"]: row["n"] for row in rows}


def _recent_samples() -> list[dict[str, Any]]:
    samples = PlatformSample.objects.order_by("-sampled_at", "-id")[:GROWTH_SAMPLES]
    return [
        {"sampled_at": isoformat_z(s.sampled_at), "queue_depth": s.queue_depth, "age": s.sampled_at}
        for s in reversed(samples)
    ]


def platform_status(*, now: datetime | None = None) -> dict[str, Any]:
    """The report `manage.py status` prints (its --json shape)."""
    now = now or timezone.now()
    errors: dict[str, str] = {}
    report: dict[str, Any] = {"at": isoformat_z(now)}
    checks = readiness()
    try:
        _check_shared_state()
        checks["shared_state"] = "ok"
    except Exception as exc:
        checks["shared_state"] = f"unavailable: {type(exc).__name__}: {exc}"[:300]
    report["checks"] = checks
    queue: dict[str, Any] = {"name": settings.QUEUE_NAME}
    _attempt(queue, "depth", errors, queue_depth)
    _attempt(queue, "oldest_message_age_seconds", errors, lambda: oldest_message_age(now=now))
    report["queue"] = queue
    _attempt(report, "workers", errors, lambda: workers_alive(now=now.timestamp()))
    concurrency: dict[str, Any] = {}
    _attempt(concurrency, "target", errors, concurrency_target_get)
    concurrency["tier"] = concurrency_tier(concurrency["target"]) if concurrency["target"] else None
    report["concurrency"] = concurrency
    _attempt(report, "last_hour", errors, lambda: _last_hour(now))
    _attempt(report, "dead_letters_pending_by_reason", errors, _dead_letters_by_reason)
    samples: list[dict[str, Any]] = []
    _attempt(report, "samples", errors, _recent_samples)
    samples = report.pop("samples") or []
    last_sample = samples[-1]["age"] if samples else None
    report["beat"] = {
        "last_sample_at": isoformat_z(last_sample) if last_sample else None,
        "last_sample_age_seconds": round((now - last_sample).total_seconds(), 1) if last_sample else None,
        "recent_depths": [s["queue_depth"] for s in samples],
    }
    depths = report["beat"]["recent_depths"]
    rising = len(depths) == GROWTH_SAMPLES and all(b >= a for a, b in pairwise(depths))
    pending = (report["last_hour"] or {}).get("pending", 0)
    report["pending_growing"] = bool(rising and depths[-1] > depths[0] and pending > 0)
    report["errors"] = errors
    return report


def status_problems(report: dict[str, Any], *, max_age_seconds: float = DEFAULT_MAX_AGE_SECONDS) -> list[str]:
    """Why the platform is not healthy, one sentence each; empty when all is well."""
    down = [f"{name} {result}" for name, result in report["checks"].items() if result != "ok"]
    problems = down + [
        f"could not read {key}: {error}"
        for key, error in report["errors"].items()
        if not any(error in reason for reason in down)  # already said: the service is down
    ]
    workers = report.get("workers")
    if workers is not None and not any(w["alive"] for w in workers.values()):
        problems.append("no worker is alive (no heartbeat in the last 3 periods)")
    age = report["beat"]["last_sample_age_seconds"]
    if age is None or age > MISSED_SAMPLES * settings.QUEUE_DEPTH_SAMPLE_SECONDS:
        problems.append("beat is not sampling the queue (no recent queue-depth sample)")
    if report["pending_growing"]:
        depths = report["beat"]["recent_depths"]
        problems.append(f"pending keeps growing: queue depth {' → '.join(map(str, depths))}")
    oldest = report["queue"].get("oldest_message_age_seconds")
    if oldest is not None and oldest > max_age_seconds:
        problems.append(f"the oldest waiting message is {oldest:.0f} s old (limit {max_age_seconds:.0f} s)")
    return problems
