"""Admin: cart checks, and abandonments with their webhook state (failed webhooks can be retried)."""

from __future__ import annotations

from django.contrib import admin, messages
from django.db.models import QuerySet
from django.http import HttpRequest

from carts.models import CartAbandonment, CartCheck
from carts.services import cart_webhooks_retry
from cloudscale_project.admin import ReadOnlyAdmin


@admin.register(CartCheck)
class CartCheckAdmin(ReadOnlyAdmin):
    list_display = ("event_id", "tenant", "user_id", "added_at", "due_at", "status", "resolved_at")
    list_filter = ("status", "tenant")
    search_fields = ("user_id", "event_id")
    readonly_fields = [f.name for f in CartCheck._meta.fields]


@admin.register(CartAbandonment)
class CartAbandonmentAdmin(ReadOnlyAdmin):
    list_display = (
        "created_at", "tenant", "user_id", "cart_event_id", "added_at",
        "webhook_status", "webhook_attempts", "response_status",
    )  # fmt: skip
    list_filter = ("webhook_status", "tenant")
    search_fields = ("user_id", "cart_event_id")
    date_hierarchy = "created_at"
    readonly_fields = [f.name for f in CartAbandonment._meta.fields]
    actions = ["retry_webhooks"]

    @admin.action(description="Retry failed webhooks")
    def retry_webhooks(self, request: HttpRequest, queryset: QuerySet[CartAbandonment]) -> None:
        count = cart_webhooks_retry(ids=queryset.values_list("pk", flat=True))
        messages.info(request, f"{count} failed webhook(s) queued for delivery again.")
