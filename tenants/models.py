"""Tenants and their API keys: the identity every other app keys its data by."""

from __future__ import annotations

from typing import Any

from django.core.exceptions import ValidationError
from django.db import models

from tenants.keycache import tenants_changed


class TenantQuerySet(models.QuerySet["Tenant"]):
    def delete(self) -> tuple[int, dict[str, int]]:
        raise TenantsAreNeverDeleted(TenantsAreNeverDeleted.MESSAGE)


class TenantsAreNeverDeleted(Exception):
    MESSAGE = "Tenants are never deleted, so their slug is never reused: retire the tenant instead."


class Tenant(models.Model):
    """A customer of the platform. Its slug keys every row and Redis key of its data, so the slug is
    frozen once created and never reused: a tenant is retired (a tombstone), never deleted."""

    slug = models.SlugField(max_length=64, unique=True, help_text="Frozen once created; never reused.")
    name = models.CharField(max_length=200)
    active = models.BooleanField(default=True, help_text="A disabled tenant's keys get 403.")
    created_at = models.DateTimeField(auto_now_add=True)
    webhook_url = models.URLField(blank=True, help_text="Receives signed cart-abandonment POSTs.")
    webhook_secret = models.CharField(max_length=128, blank=True, help_text="HMAC-SHA256 key of webhooks.")
    settings = models.JSONField(default=dict, blank=True)
    retired_at = models.DateTimeField(
        null=True, blank=True, help_text="Retired: its keys are revoked and its slug stays taken."
    )

    objects = TenantQuerySet.as_manager()

    class Meta:
        db_table = "events_tenant"  # created by the events app before tenants had an app of their own
        ordering = ["slug"]

    def __str__(self) -> str:
        return self.slug

    def save(self, *args: Any, **kwargs: Any) -> None:
        if self.pk is not None:
            stored = Tenant.objects.filter(pk=self.pk).values_list("slug", flat=True).first()
            if stored is not None and stored != self.slug:
                raise ValidationError({"slug": f"A tenant's slug is frozen once created (it is {stored!r})."})
        super().save(*args, **kwargs)
        tenants_changed()  # e.g. `active` unticked in the admin: refused at once everywhere

    def delete(self, *args: Any, **kwargs: Any) -> tuple[int, dict[str, int]]:
        raise TenantsAreNeverDeleted(TenantsAreNeverDeleted.MESSAGE)


class ApiKey(models.Model):
    """An API key, stored as its SHA-256: keys are 256-bit random, so a fast hash is enough."""

    class Scope(models.TextChoices):
        # Keys in browsers and mobile apps (SDK keys) can be read by anyone: they may only send.
        INGEST = "ingest", "ingest: send events only"
        FULL = "full", "full: send events and read the tenant's data"

    tenant = models.ForeignKey(Tenant, on_delete=models.CASCADE, related_name="api_keys")
    prefix = models.CharField(max_length=16, help_text="The key's first characters, to recognise it.")
    key_hash = models.CharField(max_length=64, unique=True)
    scope = models.CharField(max_length=8, choices=Scope.choices, default=Scope.FULL)
    created_at = models.DateTimeField(auto_now_add=True)
    revoked_at = models.DateTimeField(null=True, blank=True)

    class Meta:
        db_table = "events_apikey"
        verbose_name = "API key"
        ordering = ["-created_at"]

    def __str__(self) -> str:
        return f"{self.prefix}… ({self.tenant.slug})"

    def save(self, *args: Any, **kwargs: Any) -> None:
        super().save(*args, **kwargs)
        tenants_changed()  # e.g. revoked in the admin
