from __future__ import annotations

from django.apps import AppConfig


class CompatConfig(AppConfig):
    name = "compat"
    verbose_name = "SDK compatibility (Segment, RudderStack, PostHog)"
    default_auto_field = "django.db.models.BigAutoField"
