"""Admin: per-tenant rule settings (editable) and the alert list (read-only)."""

from __future__ import annotations

from typing import Any

from django.contrib import admin
from django.http import HttpRequest

from fraud.models import FraudAlert, FraudRuleSetting
from fraud.rules import RULES, Rule


@admin.register(FraudRuleSetting)
class FraudRuleSettingAdmin(admin.ModelAdmin):
    list_display = ("tenant", "rule", "threshold", "window_seconds", "enabled", "updated_at")
    list_editable = ("threshold", "window_seconds", "enabled")
    list_filter = ("rule", "enabled", "tenant")
    search_fields = ("tenant__slug",)

    def get_changeform_initial_data(self, request: HttpRequest) -> dict[str, Any]:
        """Prefill the rule's defaults for the chosen rule (?rule=...), the first rule otherwise."""
        initial: dict[str, Any] = dict(super().get_changeform_initial_data(request))
        chosen = initial.get("rule")
        rule = Rule(chosen) if isinstance(chosen, str) and chosen in set(Rule) else Rule.PURCHASE_VELOCITY
        spec = RULES[rule]
        initial.setdefault("rule", rule.value)
        initial.setdefault("threshold", spec.default_threshold)
        initial.setdefault("window_seconds", spec.default_window_seconds)
        return initial


@admin.register(FraudAlert)
class FraudAlertAdmin(admin.ModelAdmin):
    list_display = (
        "created_at", "tenant", "rule", "subject", "user_id", "event_type",
        "window_start", "event_count", "threshold",
    )  # fmt: skip
    list_filter = ("rule", "tenant", "event_type")
    search_fields = ("subject", "user_id")
    date_hierarchy = "created_at"
    readonly_fields = [f.name for f in FraudAlert._meta.fields]

    def has_add_permission(self, request: HttpRequest) -> bool:
        return False  # alerts are raised by the rules, not typed in

    def has_change_permission(self, request: HttpRequest, obj: Any = None) -> bool:
        return False
