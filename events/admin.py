"""Admin for dead letters: review, requeue or discard them (the same services as `manage.py dlq`)."""

from __future__ import annotations

from typing import Any

from django.contrib import admin, messages
from django.db.models import QuerySet
from django.http import HttpRequest
from django.utils.html import format_html

from events.deadletters import deadletter_discard, deadletter_payload_text, deadletter_requeue
from events.models import DeadLetter


@admin.register(DeadLetter)
class DeadLetterAdmin(admin.ModelAdmin):
    """Review dead letters; requeue or discard them in bulk (the same services as `manage.py dlq`)."""

    list_display = (
        "id",
        "reason",
        "tenant",
        "status",
        "attempts",
        "event_id",
        "short_error",
        "first_seen",
        "last_seen",
    )
    list_filter = ("reason", "status", "tenant", "kind")
    search_fields = ("event_id", "correlation_id", "error", "tenant")
    date_hierarchy = "first_seen"
    actions = ["requeue", "discard"]
    fields = (
        "reason",
        "status",
        "tenant",
        "kind",
        "event_id",
        "correlation_id",
        "received_at",
        "attempts",
        "error",
        "payload_view",
        "content_type",
        "content_encoding",
        "headers",
        "first_seen",
        "last_seen",
        "status_changed_at",
    )
    readonly_fields = fields

    def has_add_permission(self, request: HttpRequest) -> bool:
        return False  # dead letters are written by workers only

    def has_change_permission(self, request: HttpRequest, obj: Any = None) -> bool:
        return False  # read-only detail page; state changes go through the actions

    def has_delete_permission(self, request: HttpRequest, obj: Any = None) -> bool:
        return False  # discard keeps the record; nothing is deleted from the review trail

    @admin.display(description="error")
    def short_error(self, obj: DeadLetter) -> str:
        return obj.error if len(obj.error) <= 80 else obj.error[:79] + "…"

    @admin.display(description="payload")
    def payload_view(self, obj: DeadLetter) -> str:
        return format_html("<pre style='white-space: pre-wrap'>{}</pre>", deadletter_payload_text(obj))

    @admin.action(description="Requeue selected dead letters (publish the original payload again)")
    def requeue(self, request: HttpRequest, queryset: QuerySet[DeadLetter]) -> None:
        result = deadletter_requeue(ids=list(queryset.values_list("id", flat=True)))
        messages.info(
            request, f"Requeued {len(result.requeued)} dead letter(s); skipped {len(result.skipped)}."
        )

    @admin.action(description="Discard selected dead letters")
    def discard(self, request: HttpRequest, queryset: QuerySet[DeadLetter]) -> None:
        discarded = deadletter_discard(ids=list(queryset.values_list("id", flat=True)))
        messages.info(request, f"Discarded {discarded} dead letter(s).")
