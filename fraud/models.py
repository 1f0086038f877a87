"""Per-tenant rule settings (edited in admin) and the alerts the velocity rules raise."""

from __future__ import annotations

from typing import Any

from django.core.validators import MinValueValidator
from django.db import models
from django.db.models.signals import post_delete, post_save
from django.dispatch import receiver

from fraud.rulecache import rule_settings_changed
from fraud.rules import RULES, Rule
from tenants.models import Tenant

RULE_CHOICES = [(rule.value, f"{rule.value}: more than N {spec.description}") for rule, spec in RULES.items()]


class FraudRuleSettingQuerySet(models.QuerySet["FraudRuleSetting"]):
    """`update()` sends no save signal, so it drops the workers' cached settings itself.

    `bulk_create`, `bulk_update` and raw SQL do not: nothing writes settings that way, and whatever
    does must call `fraud.rulecache.rule_settings_changed()`.
    """

    def update(self, **kwargs: Any) -> int:
        rows = super().update(**kwargs)
        rule_settings_changed()
        return rows


class FraudRuleSetting(models.Model):
    """A tenant's override of one rule; a rule without a row runs with its defaults."""

    tenant = models.ForeignKey(Tenant, on_delete=models.CASCADE, related_name="fraud_rule_settings")
    rule = models.CharField(max_length=32, choices=RULE_CHOICES)
    threshold = models.PositiveIntegerField(
        validators=[MinValueValidator(1)], help_text="The rule hits when the count is MORE than this."
    )
    window_seconds = models.PositiveIntegerField(
        validators=[MinValueValidator(1)], help_text="Sliding window of event time, in seconds."
    )
    enabled = models.BooleanField(default=True)
    updated_at = models.DateTimeField(auto_now=True)

    objects = FraudRuleSettingQuerySet.as_manager()

    class Meta:
        constraints = [models.UniqueConstraint(fields=["tenant", "rule"], name="fraud_rule_setting_once")]
        ordering = ["tenant__slug", "rule"]

    def __str__(self) -> str:
        return f"{self.tenant.slug}/{self.rule}"


@receiver(post_save, sender=FraudRuleSetting, dispatch_uid="fraud_rule_setting_saved")
@receiver(post_delete, sender=FraudRuleSetting, dispatch_uid="fraud_rule_setting_deleted")
def _rule_setting_written(**kwargs: Any) -> None:
    """Admin saves, list edits and deletes (one by one or the bulk action): every worker's next batch."""
    rule_settings_changed()


class FraudAlert(models.Model):
    """One hit of a rule, at most one per (tenant, rule, subject, window bucket) — see fraud/rules.py."""

    tenant = models.CharField(max_length=64)
    rule = models.CharField(max_length=32, choices=[(r.value, r.value) for r in Rule])
    subject = models.CharField(max_length=128, help_text="The user id, or the IP for ip_distinct_users.")
    user_id = models.CharField(max_length=128, help_text="The user whose event closed the window.")
    # 200: a custom event's name (SDK-compatible endpoints) can close a window too.
    event_type = models.CharField(max_length=200, help_text="The type of the event that closed the window.")
    window_start = models.DateTimeField(help_text="Start of the bucket the hitting window ends in.")
    window_end = models.DateTimeField()
    window_seconds = models.PositiveIntegerField()
    threshold = models.PositiveIntegerField()
    event_count = models.PositiveIntegerField(help_text="Events (or distinct users) in the hitting window.")
    event_ids = models.JSONField(default=list, help_text="Events in the hitting window.")
    created_at = models.DateTimeField(auto_now_add=True)

    class Meta:
        constraints = [
            models.UniqueConstraint(
                fields=["tenant", "rule", "subject", "window_start"], name="fraud_alert_once_per_window"
            )
        ]
        indexes = [
            models.Index(fields=["tenant", "-created_at"], name="fraud_alert_tenant_created"),
            models.Index(fields=["tenant", "user_id", "-created_at"], name="fraud_alert_tenant_user"),
        ]
        ordering = ["-created_at", "-id"]

    def __str__(self) -> str:
        return f"{self.tenant}/{self.rule}/{self.subject}@{self.window_start:%Y-%m-%dT%H:%M:%SZ}"
