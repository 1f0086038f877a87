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
