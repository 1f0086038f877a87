"""Admin: user scores (search by user), cart checks, and abandonments with their webhook state."""

from __future__ import annotations

from typing import Any

from django.contrib import admin, messages
from django.db.models import QuerySet
from django.http import HttpRequest

from cloudscale_project.timeutil import utcnow
from scoring.carts import cart_webhooks_retry
from scoring.models import CartAbandonment, CartCheck, UserScore
from scoring.weights import score_at, segment_for


class _ReadOnlyAdmin(admin.ModelAdmin):
    """Rows written by the pipeline and beat: operators read them, they do not type them in."""

    def has_add_permission(self, request: HttpRequest) -> bool:
        return False

    def has_change_permission(self, request: HttpRequest, obj: Any = None) -> bool:
        return False


@admin.register(UserScore)
class UserScoreAdmin(_ReadOnlyAdmin):
    list_display = ("user_id", "tenant", "score", "segment", "events_counted", "last_event_at", "updated_at")
    list_filter = ("tenant",)
    search_fields = ("user_id",)
    readonly_fields = [f.name for f in UserScore._meta.fields]

    @admin.display(description="score (now)")
    def score(self, obj: UserScore) -> str:
        return f"{score_at(score_at_epoch=obj.score_at_epoch, now=utcnow()):.2f}"

    @admin.display(description="segment")
    def segment(self, obj: UserScore) -> str:
        return segment_for(score_at(score_at_epoch=obj.score_at_epoch, now=utcnow()))


@admin.register(CartCheck)
class CartCheckAdmin(_ReadOnlyAdmin):
    list_display = ("event_id", "tenant", "user_id", "added_at", "due_at", "status", "resolved_at")
    list_filter = ("status", "tenant")
    search_fields = ("user_id", "event_id")
    readonly_fields = [f.name for f in CartCheck._meta.fields]


@admin.register(CartAbandonment)
class CartAbandonmentAdmin(_ReadOnlyAdmin):
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
