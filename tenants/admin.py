"""Admin for tenants and their keys; a new key is shown exactly once, after it is issued."""

from __future__ import annotations

from typing import Any

from django.contrib import admin, messages
from django.db.models import QuerySet
from django.http import HttpRequest

from tenants.models import ApiKey, Tenant
from tenants.services import (
    TenantRetired,
    tenant_create_key,
    tenant_retire,
    tenant_rotate_key,
    tenant_set_active,
)


class ApiKeyInline(admin.TabularInline):
    model = ApiKey
    extra = 0
    can_delete = False
    fields = ("prefix", "scope", "created_at", "revoked_at")
    readonly_fields = ("prefix", "scope", "created_at", "revoked_at")

    def has_add_permission(self, request: HttpRequest, obj: Any = None) -> bool:
        return False


@admin.register(Tenant)
class TenantAdmin(admin.ModelAdmin):
    list_display = ("slug", "name", "active", "retired_at", "created_at", "webhook_url")
    list_filter = ("active",)
    search_fields = ("slug", "name")
    readonly_fields = ("created_at", "retired_at")
    inlines = [ApiKeyInline]
    actions = [
        "rotate_keys", "issue_ingest_keys", "issue_full_keys", "disable_tenants", "enable_tenants",
        "retire_tenants",
    ]  # fmt: skip

    def get_readonly_fields(self, request: HttpRequest, obj: Tenant | None = None) -> Any:
        # The slug keys the tenant's data everywhere: frozen once the tenant exists.
        return (*self.readonly_fields, "slug") if obj is not None else self.readonly_fields

    def has_delete_permission(self, request: HttpRequest, obj: Any = None) -> bool:
        return False  # tenants are retired, never deleted: a deleted slug could be reused

    def get_actions(self, request: HttpRequest) -> Any:
        actions = super().get_actions(request)
        actions.pop("delete_selected", None)
        return actions

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

    @admin.action(description="Issue an ingest-only API key (for SDKs in apps)")
    def issue_ingest_keys(self, request: HttpRequest, queryset: QuerySet[Tenant]) -> None:
        self._issue_keys(request, queryset, ApiKey.Scope.INGEST)

    @admin.action(description="Issue a further full API key")
    def issue_full_keys(self, request: HttpRequest, queryset: QuerySet[Tenant]) -> None:
        self._issue_keys(request, queryset, ApiKey.Scope.FULL)

    def _issue_keys(self, request: HttpRequest, queryset: QuerySet[Tenant], scope: str) -> None:
        for tenant in queryset:
            try:
                issued = tenant_create_key(slug=tenant.slug, scope=scope)
            except TenantRetired as exc:
                messages.error(request, str(exc))
                continue
            messages.warning(request, f"New {scope} API key for {tenant.slug} (shown once): {issued.key}")

    @admin.action(description="Retire selected tenants (for good: keys revoked, slug never reused)")
    def retire_tenants(self, request: HttpRequest, queryset: QuerySet[Tenant]) -> None:
        for tenant in queryset:
            tenant_retire(slug=tenant.slug)
        messages.info(request, f"Retired {len(queryset)} tenant(s).")

    @admin.action(description="Disable selected tenants")
    def disable_tenants(self, request: HttpRequest, queryset: QuerySet[Tenant]) -> None:
        for tenant in queryset:
            tenant_set_active(slug=tenant.slug, active=False)
        messages.info(request, f"Disabled {len(queryset)} tenant(s).")

    @admin.action(description="Enable selected tenants")
    def enable_tenants(self, request: HttpRequest, queryset: QuerySet[Tenant]) -> None:
        for tenant in queryset:
            try:
                tenant_set_active(slug=tenant.slug, active=True)
            except TenantRetired as exc:
                messages.error(request, str(exc))
        messages.info(request, "Enabled the selected tenant(s) that are not retired.")


@admin.register(ApiKey)
class ApiKeyAdmin(admin.ModelAdmin):
    list_display = ("prefix", "tenant", "scope", "created_at", "revoked_at")
    list_filter = ("scope", "tenant")
    readonly_fields = ("tenant", "prefix", "scope", "key_hash", "created_at")
    fields = ("tenant", "prefix", "scope", "key_hash", "created_at", "revoked_at")

    def has_add_permission(self, request: HttpRequest) -> bool:
        return False  # keys are issued by rotating, so the plain key can be shown once
