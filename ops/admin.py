"""Admin: the backpressure history is a read-only audit trail."""

from __future__ import annotations

from django.contrib import admin
from django.http import HttpRequest

from ops.models import ConcurrencyChange, PlatformSample

# The admin index links to the overview charts (ops/dashboard_views.py).
admin.site.index_template = "ops/admin_index.html"


@admin.register(ConcurrencyChange)
class ConcurrencyChangeAdmin(admin.ModelAdmin):
    list_display = ("changed_at", "queue_depth", "old_target", "new_target", "reason", "broadcast")
    list_filter = ("new_target", "broadcast")
    date_hierarchy = "changed_at"
    readonly_fields = ("changed_at", "queue_depth", "old_target", "new_target", "reason", "broadcast")

    def has_add_permission(self, request: HttpRequest) -> bool:
        return False

    def has_change_permission(self, request: HttpRequest, obj: ConcurrencyChange | None = None) -> bool:
        return False

    def has_delete_permission(self, request: HttpRequest, obj: ConcurrencyChange | None = None) -> bool:
        return False


@admin.register(PlatformSample)
class PlatformSampleAdmin(admin.ModelAdmin):
    """Beat's samples behind the overview charts: read-only, pruned by the sampler."""

    list_display = ("sampled_at", "queue_depth", "concurrency_target", "pool_processes", "workers_alive")
    date_hierarchy = "sampled_at"
    readonly_fields = list_display

    def has_add_permission(self, request: HttpRequest) -> bool:
        return False

    def has_change_permission(self, request: HttpRequest, obj: PlatformSample | None = None) -> bool:
        return False

    def has_delete_permission(self, request: HttpRequest, obj: PlatformSample | None = None) -> bool:
        return False
