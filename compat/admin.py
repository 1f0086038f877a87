"""Operators review ingestion warnings here: read-only, filtered by tenant, protocol and code."""

from __future__ import annotations

from django.contrib import admin
from django.http import HttpRequest

from compat.models import IngestionWarning


@admin.register(IngestionWarning)
class IngestionWarningAdmin(admin.ModelAdmin):
    list_display = ("time", "tenant", "protocol", "code", "event_name", "event_id", "field", "message")
    list_filter = ("protocol", "code", "tenant")
    search_fields = ("event_id", "event_name", "correlation_id", "message")
    date_hierarchy = "time"
    readonly_fields = [f.name for f in IngestionWarning._meta.fields]

    def has_add_permission(self, request: HttpRequest) -> bool:
        return False

    def has_change_permission(self, request: HttpRequest, obj: IngestionWarning | None = None) -> bool:
        return False
