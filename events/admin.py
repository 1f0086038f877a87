"""Admin for dead letters: review, requeue or discard them (the same services as `manage.py dlq`)."""

from __future__ import annotations

import json
from typing import Any

from django import forms
from django.contrib import admin, messages
from django.db.models import QuerySet
from django.http import HttpRequest, HttpResponse
from django.utils.html import format_html, format_html_join

from events.deadletters import (
    deadletter_discard,
    deadletter_event,
    deadletter_fix,
    deadletter_fix_errors,
    deadletter_outcome_text,
    deadletter_payload_text,
    deadletter_requeue,
    deadletter_resolve_outcomes,
)
from events.models import DeadLetter


class IndentedJSONField(forms.JSONField):
    def prepare_value(self, value: Any) -> str:
        if isinstance(value, str):  # a bound value as the operator typed it
            return value
        return json.dumps(value, indent=2, ensure_ascii=False)


class DeadLetterFixForm(forms.ModelForm):
    """The one editable thing of a dead letter: a corrected copy of its event."""

    fixed_event = IndentedJSONField(
        label="event to requeue",
        widget=forms.Textarea(
            attrs={"rows": 22, "cols": 90, "spellcheck": "false", "class": "vLargeTextField"}
        ),
        help_text="Edit the event as JSON. It is checked against the event catalog before it is kept; "
        "the original payload above stays as it was. The next requeue publishes this copy.",
    )

    class Meta:
        model = DeadLetter
        fields: list[str] = []

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        if self.instance.pk is not None:
            self.fields["fixed_event"].initial = deadletter_event(self.instance)

    def clean_fixed_event(self) -> Any:
        event = self.cleaned_data["fixed_event"]
        errors = deadletter_fix_errors(letter=self.instance, event=event)
        if errors:
            raise forms.ValidationError([f"{e.field}: {e.message}" for e in errors])
        return event


_FIXABLE = (DeadLetter.Status.PENDING, DeadLetter.Status.DISCARDED)


@admin.register(DeadLetter)
class DeadLetterAdmin(admin.ModelAdmin):
    """Review dead letters; fix one, requeue or discard them in bulk (the services of `manage.py dlq`)."""

    list_display = (
        "id",
        "reason",
        "tenant",
        "status",
        "attempts",
        "event_id",
        "short_error",
        "fixed",
        "after_requeue",
        "first_seen",
        "last_seen",
    )
    list_filter = ("reason", "status", "requeue_outcome", "tenant", "kind")
    search_fields = ("event_id", "correlation_id", "error", "tenant")
    date_hierarchy = "first_seen"
    actions = ["requeue", "discard"]
    form = DeadLetterFixForm
    change_form_template = "admin/events/deadletter/change_form.html"
    summary_fields = (
        "reason",
        "status",
        "tenant",
        "kind",
        "event_id",
        "correlation_id",
        "received_at",
        "attempts",
        "error",
    )
    audit_fields = ("after_requeue", "fixed_by", "fixed_at", "requeued_by", "requeued_at", "audit_trail")
    broker_fields = (
        "content_type",
        "content_encoding",
        "headers",
        "first_seen",
        "last_seen",
        "status_changed_at",
    )
    readonly_fields = (*summary_fields, "payload_view", "fixed_view", *audit_fields, *broker_fields)

    def get_fieldsets(self, request: HttpRequest, obj: DeadLetter | None = None) -> Any:
        editable = self.has_change_permission(request, obj)
        event = ("payload_view", "fixed_event") if editable else ("payload_view", "fixed_view")
        return [
            (None, {"fields": self.summary_fields}),
            ("Event", {"fields": event}),
            ("Fix and requeue", {"fields": self.audit_fields}),
            ("Broker message", {"fields": self.broker_fields, "classes": ["collapse"]}),
        ]

    def has_add_permission(self, request: HttpRequest) -> bool:
        return False  # dead letters are written by workers only

    def has_change_permission(self, request: HttpRequest, obj: Any = None) -> bool:
        # Only the fix of a single event that is not in flight is editable; the rest is read-only,
        # and state changes go through the actions.
        return (
            obj is not None
            and obj.kind == DeadLetter.Kind.EVENT
            and obj.status in _FIXABLE
            and super().has_change_permission(request, obj)
        )

    def has_delete_permission(self, request: HttpRequest, obj: Any = None) -> bool:
        return False  # discard keeps the record; nothing is deleted from the review trail

    def changelist_view(self, request: HttpRequest, extra_context: dict[str, Any] | None = None) -> Any:
        # Requeued events the store holds by now are marked `stored` before the list is shown.
        in_flight = DeadLetter.objects.filter(requeue_outcome=DeadLetter.RequeueOutcome.PUBLISHED)
        deadletter_resolve_outcomes(letters=in_flight.order_by("-requeued_at")[:200])
        return super().changelist_view(request, extra_context)

    def save_model(self, request: HttpRequest, obj: DeadLetter, form: Any, change: bool) -> None:
        deadletter_fix(
            letter_id=obj.pk, event=form.cleaned_data["fixed_event"], by=request.user.get_username()
        )

    def response_change(self, request: HttpRequest, obj: DeadLetter) -> HttpResponse:
        if "_fix_and_requeue" in request.POST:
            result = deadletter_requeue(ids=[obj.pk], by=request.user.get_username())
            if result.requeued:
                messages.success(
                    request, f"Fixed and requeued dead letter {obj.pk}; its outcome shows in the list."
                )
            else:
                messages.warning(request, f"Fixed dead letter {obj.pk}, but it could not be requeued.")
            return self.response_post_save_change(request, obj)
        return super().response_change(request, obj)

    @admin.display(description="error")
    def short_error(self, obj: DeadLetter) -> str:
        return obj.error if len(obj.error) <= 80 else obj.error[:79] + "…"

    @admin.display(description="fixed", boolean=True)
    def fixed(self, obj: DeadLetter) -> bool:
        return obj.fixed_payload is not None

    @admin.display(description="after requeue", ordering="requeue_outcome")
    def after_requeue(self, obj: DeadLetter) -> str:
        text = deadletter_outcome_text(obj)
        if not text:
            return "-"
        return format_html('<span class="requeue-{}">{}</span>', obj.requeue_outcome, text)

    @admin.display(description="original payload")
    def payload_view(self, obj: DeadLetter) -> str:
        return format_html("<pre style='white-space: pre-wrap'>{}</pre>", deadletter_payload_text(obj))

    @admin.display(description="fixed copy")
    def fixed_view(self, obj: DeadLetter) -> str:
        if obj.fixed_payload is None:
            return "-"
        return format_html(
            "<pre style='white-space: pre-wrap'>{}</pre>", json.dumps(deadletter_event(obj), indent=2)
        )

    @admin.display(description="history")
    def audit_trail(self, obj: DeadLetter) -> str:
        if not obj.history:
            return "-"
        return format_html(
            "<table class='deadletter-history'><tr><th>when</th><th>who</th><th>what</th></tr>{}</table>",
            format_html_join("", "<tr><td>{}</td><td>{}</td><td>{}</td></tr>", (
                (entry.get("at", ""), entry.get("by", "-"), _describe_entry(entry)) for entry in obj.history
            )),
        )  # fmt: skip

    @admin.action(description="Requeue selected dead letters (publish the payload, or its fixed copy, again)")
    def requeue(self, request: HttpRequest, queryset: QuerySet[DeadLetter]) -> None:
        result = deadletter_requeue(
            ids=list(queryset.values_list("id", flat=True)), by=request.user.get_username()
        )
        messages.info(
            request, f"Requeued {len(result.requeued)} dead letter(s); skipped {len(result.skipped)}."
        )

    @admin.action(description="Discard selected dead letters")
    def discard(self, request: HttpRequest, queryset: QuerySet[DeadLetter]) -> None:
        discarded = deadletter_discard(ids=list(queryset.values_list("id", flat=True)))
        messages.info(request, f"Discarded {discarded} dead letter(s).")


def _describe_entry(entry: dict[str, Any]) -> str:
    action = entry.get("action", "")
    if action == "fixed":
        changes = entry.get("changes") or []
        return "fixed: " + (
            "; ".join(f"{c['field']} {json.dumps(c['old'])} → {json.dumps(c['new'])}" for c in changes)
            or "no change"
        )
    if action == "requeued":
        return f"requeued the {entry.get('payload', 'original')} payload"
    if action == "failed":
        again = f" as dead letter #{entry['dead_letter']}" if entry.get("dead_letter") else ""
        return f"failed again{again}: {entry.get('reason', '')}: {entry.get('error', '')}"
    if action == "stored":
        return "stored by the event store"
    return str(action)
