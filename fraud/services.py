"""Fraud step of the pipeline: the velocity rules over event time, batch-wise and idempotent.

Per batch: the tenant's rule settings (cached per process, fraud/rulecache.py), one Redis call (a
server-side script that records the batch in every window it touches and evaluates the rules
there, see fraud/windows.py) and, only when a rule hits, the alert writes. Settings from the cache
go to the script with the version they were read under, and the script checks it before anything
else: one round trip, not a GET of the version and then the script. If the version moved on, the
script records nothing and the batch is sent again with the settings read anew.
Redelivery of a batch adds the same members to the windows (no double count) and finds the same
(rule, subject, bucket) keys, which the unique constraint on FraudAlert turns away; the metric
counts only alerts this call created.
"""

from __future__ import annotations

import logging
from collections import Counter, defaultdict
from collections.abc import Sequence
from datetime import UTC, datetime
from typing import Any

from django.db import IntegrityError, transaction

from cloudscale_project.metrics import platform_incr_many
from cloudscale_project.timeutil import parse_iso
from events.schemas import CUSTOM_METRIC_LABEL, EVENT_TYPES
from fraud.models import FraudAlert
from fraud.rulecache import VERSION_KEY
from fraud.rules import Entry, Hit, Rule, RuleConfig, rule_subject
from fraud.selectors import fraud_rule_configs, fraud_rule_configs_at, fraud_rule_configs_cached
from fraud.windows import PendingHits, VersionChanged, WindowUpdate, get_fraud_window_store

logger = logging.getLogger(__name__)


def _epoch(value: float) -> datetime:
    return datetime.fromtimestamp(value, UTC)


class FraudStep:
    """Pipeline step: evaluate the velocity rules for a batch of decoded events of one tenant.

    Called, it runs to the end. Begun (`begin`, what the pipeline does), it sends the batch to the
    rule windows and returns; the pipeline writes the batch to the database while Redis evaluates
    it, then finishes the step (reads the hits, writes the alerts) or abandons it.
    """

    def __call__(self, *, tenant: str, events: Sequence[dict[str, Any]]) -> None:
        fraud_alerts_raise(tenant=tenant, events=events)

    def begin(self, *, tenant: str, events: Sequence[dict[str, Any]]) -> PendingAlerts:
        return fraud_alerts_begin(tenant=tenant, events=events)


fraud_evaluate_batch = FraudStep()


def fraud_alerts_raise(*, tenant: str, events: Sequence[dict[str, Any]]) -> list[FraudAlert]:
    """Record the batch in the rule windows; create and return the alerts not raised before."""
    return fraud_alerts_begin(tenant=tenant, events=events).finish()


class PendingAlerts:
    """A batch sent to the rule windows: `finish` reads the hits and writes their alerts."""

    def __init__(
        self,
        *,
        tenant: str,
        events: Sequence[dict[str, Any]],
        keys: list[tuple[RuleConfig, str]],
        hits: PendingHits,
    ) -> None:
        self._tenant = tenant
        self._events = events
        self._keys = keys
        self._hits = hits

    def finish(self) -> list[FraudAlert]:
        try:
            hits = self._hits.result()
        except VersionChanged as changed:  # nothing was recorded: again, with the settings of now
            configs = fraud_rule_configs_at(tenant=self._tenant, version=changed.current)
            return _begin(tenant=self._tenant, events=self._events, configs=configs, only_at=None).finish()
        candidates = [
            _alert(tenant=self._tenant, config=config, subject=subject, hit=hit)
            for (config, subject), subject_hits in zip(self._keys, hits, strict=True)
            for hit in subject_hits
        ]
        if not candidates:
            return []
        created = _alerts_create(tenant=self._tenant, candidates=candidates)
        if created:
            platform_incr_many(
                "cloudscale_fraud_detected_total",
                [
                    ({"event_type": event_type}, n)
                    for event_type, n in Counter(
                        a.event_type if a.event_type in EVENT_TYPES else CUSTOM_METRIC_LABEL for a in created
                    ).items()
                ],
            )
        return created

    def abandon(self) -> None:
        self._hits.abandon()


def fraud_alerts_begin(*, tenant: str, events: Sequence[dict[str, Any]]) -> PendingAlerts:
    """Send the batch to the rule windows (fraud/windows.py) without waiting for the hits."""
    cached = fraud_rule_configs_cached(tenant=tenant)
    if cached is None:
        return _begin(tenant=tenant, events=events, configs=fraud_rule_configs(tenant=tenant), only_at=None)
    configs, version = cached
    return _begin(tenant=tenant, events=events, configs=configs, only_at=version)


def _begin(
    *, tenant: str, events: Sequence[dict[str, Any]], configs: dict[Rule, RuleConfig], only_at: int | None
) -> PendingAlerts:
    """Send the batch, with `configs` read under version `only_at` of the settings (None: known
    to be current)."""
    enabled = [config for config in configs.values() if config.enabled]
    # Windows by (index in `enabled`, subject): a RuleConfig key would be hashed field by field for
    # every event and rule.
    rules = [(index, config.spec) for index, config in enumerate(enabled)]
    grouped: dict[tuple[int, str], dict[str, Entry]] = defaultdict(dict)
    for event in events:
        entry = Entry(
            parse_iso(event["timestamp"]).timestamp(),
            str(event["event_id"]),
            str(event["user_id"]),
            str(event["event_type"]),
        )
        for index, spec in rules:
            subject = rule_subject(spec, event)
            if subject is None:
                continue
            entries = grouped[(index, subject)]
            if not spec.distinct_users:
                entries[entry.event_id] = entry  # a repeat within the batch counts once
                continue
            # One entry per user: the user's latest event (ties: the larger id, as the rules order).
            known = entries.get(entry.user_id)
            if known is None or (entry.at, entry.event_id) > (known.at, known.event_id):
                entries[entry.user_id] = entry
    keys = [(enabled[index], subject) for index, subject in grouped]
    updates = [
        WindowUpdate(
            tenant=tenant,
            rule=config.rule.value,
            subject=subject,
            entries=list(entries.values()),
            window_seconds=config.window_seconds,
            threshold=config.threshold,
            distinct_users=config.spec.distinct_users,
        )
        for (config, subject), entries in zip(keys, grouped.values(), strict=True)
    ]
    if only_at is not None and not updates:
        # No script to check the version with, and cached settings may hide a rule enabled since:
        # confirm them with a read of the version (the database only if they changed).
        return _begin(tenant=tenant, events=events, configs=fraud_rule_configs(tenant=tenant), only_at=None)
    store = get_fraud_window_store()
    hits = store.begin_add_and_evaluate(
        updates=updates, only_at=(VERSION_KEY, only_at) if only_at is not None else None
    )
    return PendingAlerts(tenant=tenant, events=events, keys=keys, hits=hits)


def _alert(*, tenant: str, config: RuleConfig, subject: str, hit: Hit) -> FraudAlert:
    start = hit.bucket * config.window_seconds
    return FraudAlert(
        tenant=tenant,
        rule=config.rule.value,
        subject=subject,
        user_id=hit.user_id,
        event_type=hit.event_type,
        window_start=_epoch(start),
        window_end=_epoch(start + config.window_seconds),
        window_seconds=config.window_seconds,
        threshold=config.threshold,
        event_count=hit.count,
        event_ids=list(hit.event_ids),
    )


def _alerts_create(*, tenant: str, candidates: list[FraudAlert]) -> list[FraudAlert]:
    """Insert the alerts not raised yet; the unique constraint decides who wins a race.

    Hits are rare and mostly repeats of known windows (a burst keeps hitting its bucket), so one
    query filters the known ones and each remaining alert is inserted in its own savepoint: the
    insert that raises IntegrityError lost to another worker and is neither returned nor counted.
    """
    known = set(
        FraudAlert.objects.filter(
            tenant=tenant,
            rule__in={a.rule for a in candidates},
            subject__in={a.subject for a in candidates},
            window_start__in={a.window_start for a in candidates},
        ).values_list("rule", "subject", "window_start")
    )
    fresh = [a for a in candidates if (a.rule, a.subject, a.window_start) not in known]
    created: list[FraudAlert] = []
    if not fresh:
        # No write transaction at all: on SQLite one waits for the database's single write lock,
        # which the other pool processes' store writes hold much of the time.
        return created
    with transaction.atomic():
        for alert in fresh:
            try:
                with transaction.atomic():
                    alert.save(force_insert=True)
            except IntegrityError:
                continue
            created.append(alert)
            logger.warning(
                "fraud alert %s subject=%s window_start=%s count=%d threshold=%d",
                alert.rule,
                alert.subject,
                alert.window_start.isoformat(),
                alert.event_count,
                alert.threshold,
                extra={"tenant": tenant, "rule": alert.rule, "subject": alert.subject},
            )
    return created
