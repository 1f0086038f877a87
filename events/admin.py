"""Admin for tenants and their keys; a new key is shown exactly once, after it is issued."""

from __future__ import annotations

from typing import Any

from django.contrib import admin, messages
from django.db.models import QuerySet
from django.http import HttpRequest

from events.models import ApiKey, Tenant
from events.tenants import tenant_rotate_key


class ApiKeyInline(admin.TabularInline):
    model = ApiKey
    extra = 0
    can_delete = False
    fields = ("prefix", "created_at", "revoked_at")
    readonly_fields = ("prefix", "created_at", "revoked_at")

    def has_add_permission(self, request: HttpRequest, obj: Any = None) -> bool:
        return False


@admin.register(Tenant)
class TenantAdmin(admin.ModelAdmin):
    list_display = ("slug", "name", "active", "created_at", "webhook_url")
    list_filter = ("active",)
    search_fields = ("slug", "name")
    readonly_fields = ("created_at",)
    inlines = [ApiKeyInline]
    actions = ["rotate_keys", "disable_tenants", "enable_tenants"]

    def save_model(self, request: HttpRequest, obj: Tenant, form: Any, change: bool) -> None:
        creating = obj.pk is None
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
