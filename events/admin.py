"""Admin for tenants and their keys; a new key is shown exactly once, after it is issued."""

from __future__ import annotations

from typing import Any

from django import forms
from django.contrib import admin, messages
from django.db.models import QuerySet
from django.http import HttpRequest
from django.utils.html import format_html

from cloudscale_project.outbound import webhook_url_refusal
from events.deadletters import deadletter_discard, deadletter_payload_text, deadletter_requeue
from events.models import ApiKey, DeadLetter, Tenant
from events.tenants import new_webhook_secret, tenant_rotate_key


class ApiKeyInline(admin.TabularInline):
    model = ApiKey
    extra = 0
    can_delete = False
    fields = ("prefix", "created_at", "revoked_at")
    readonly_fields = ("prefix", "created_at", "revoked_at")

    def has_add_permission(self, request: HttpRequest, obj: Any = None) -> bool:
        return False


class TenantForm(forms.ModelForm):
    class Meta:
        model = Tenant
        fields = "__all__"  # noqa: DJ007 (the admin shows every field of a tenant)

    def clean_webhook_url(self) -> str:
        """Refuse a webhook URL that delivery would refuse (loopback, private, metadata addresses)."""
        url = str(self.cleaned_data.get("webhook_url") or "")
        refusal = webhook_url_refusal(url) if url else None
        if refusal:
            raise forms.ValidationError(refusal)
        return url


@admin.register(Tenant)
class TenantAdmin(admin.ModelAdmin):
    form = TenantForm
    list_display = ("slug", "name", "active", "created_at", "webhook_url")
    list_filter = ("active",)
    search_fields = ("slug", "name")
    readonly_fields = ("created_at",)
    inlines = [ApiKeyInline]
    actions = ["rotate_keys", "disable_tenants", "enable_tenants"]

    def save_model(self, request: HttpRequest, obj: Tenant, form: Any, change: bool) -> None:
        creating = obj.pk is None
        if not obj.webhook_secret:
            obj.webhook_secret = new_webhook_secret()  # a tenant without one would get no webhooks
        super().save_model(request, obj, form, change)
        if creating:
            issued = tenant_rotate_key(slug=obj.slug)
            messages.warning(
                request,
                f"API key for {obj.slug} (shown once, copy it now): {issued.key}",
            )

    @admin.action(description="Rotate API key (revokes the old ones)")
    def rotate_keys(self, request: HttpRequest, queryset: QuerySet[Tenant]) -> None:
        for tenant in queryset:
            issued = tenant_rotate_key(slug=tenant.slug)
            messages.warning(request, f"New API key for {tenant.slug} (shown once): {issued.key}")

    @admin.action(description="Disable selected tenants")
    def disable_tenants(self, request: HttpRequest, queryset: QuerySet[Tenant]) -> None:
        updated = queryset.update(active=False)
        messages.info(request, f"Disabled {updated} tenant(s).")

    @admin.action(description="Enable selected tenants")
    def enable_tenants(self, request: HttpRequest, queryset: QuerySet[Tenant]) -> None:
        updated = queryset.update(active=True)
        messages.info(request, f"Enabled {updated} tenant(s).")


@admin.register(ApiKey)
class ApiKeyAdmin(admin.ModelAdmin):
    list_display = ("prefix", "tenant", "created_at", "revoked_at")
    list_filter = ("tenant",)
    readonly_fields = ("tenant", "prefix", "key_hash", "created_at")
    fields = ("tenant", "prefix", "key_hash", "created_at", "revoked_at")

    def has_add_permission(self, request: HttpRequest) -> bool:
        return False  # keys are issued by rotating, so the plain key can be shown once


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
