"""Reads of fraud state: a tenant's rule configuration and its alerts."""

from __future__ import annotations

from datetime import datetime

from django.db.models import QuerySet

from fraud.models import FraudAlert, FraudRuleSetting
from fraud.rulecache import rule_configs_cache
from fraud.rules import Rule, RuleConfig, default_configs


def fraud_rule_configs(*, tenant: str) -> dict[Rule, RuleConfig]:
    """Every rule as this tenant runs it: the defaults (docs/api.md, "Fraud rules") with its admin edits.

    The fraud step asks for every batch, so the answer is cached per process until any setting
    changes (fraud/rulecache.py); the caller gets its own copy of the dict.
    """
    return dict(rule_configs_cache.get(tenant, lambda: _rule_configs_load(tenant)))


def fraud_rule_configs_cached(*, tenant: str) -> tuple[dict[Rule, RuleConfig], int] | None:
    """The tenant's cached settings and the version they were read under, without reading the
    current version (None if not cached): for a caller that checks the version in a round trip
    it makes anyway (the fraud script), then calls `fraud_rule_configs_at` if it moved on."""
    hit = rule_configs_cache.peek(tenant)
    return (dict(hit[1]), hit[0]) if hit is not None else None


def fraud_rule_configs_at(*, tenant: str, version: int | None) -> dict[Rule, RuleConfig]:
    """`fraud_rule_configs` when the current version is known (None: the version key is missing,
    so the ordinary read, which starts it again)."""
    if version is None:
        return fraud_rule_configs(tenant=tenant)
    return dict(rule_configs_cache.get_at(tenant, lambda: _rule_configs_load(tenant), version=version))


def _rule_configs_load(tenant: str) -> dict[Rule, RuleConfig]:
    configs = default_configs()
    for setting in FraudRuleSetting.objects.filter(tenant__slug=tenant):
        rule = Rule(setting.rule)
        configs[rule] = RuleConfig(rule, setting.threshold, setting.window_seconds, setting.enabled)
    return configs


def fraud_alert_list(
    *,
    tenant: str,
    user_id: str | None = None,
    rule: str | None = None,
    since: datetime | None = None,
    limit: int = 100,
) -> QuerySet[FraudAlert]:
    """A tenant's alerts, newest first; `since` compares with the time the alert was raised."""
    alerts = FraudAlert.objects.filter(tenant=tenant)
    if user_id:
        alerts = alerts.filter(user_id=user_id)
    if rule:
        alerts = alerts.filter(rule=rule)
    if since is not None:
        alerts = alerts.filter(created_at__gte=since)
    return alerts.order_by("-created_at", "-id")[:limit]
