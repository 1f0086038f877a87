"""Tenants, their API keys, the ORM event store and the dead-letter store."""

from __future__ import annotations

from django.db import models


class Tenant(models.Model):
    slug = models.SlugField(max_length=64, unique=True)
    name = models.CharField(max_length=200)
    active = models.BooleanField(default=True, help_text="A disabled tenant's keys get 403.")
    created_at = models.DateTimeField(auto_now_add=True)
    webhook_url = models.URLField(blank=True, help_text="Receives signed cart-abandonment POSTs.")
    webhook_secret = models.CharField(max_length=128, blank=True, help_text="HMAC-SHA256 key of webhooks.")
    settings = models.JSONField(default=dict, blank=True)

    class Meta:
        ordering = ["slug"]

    def __str__(self) -> str:
        return self.slug


class ApiKey(models.Model):
    """An API key, stored as its SHA-256: keys are 256-bit random, so a fast hash is enough."""

    tenant = models.ForeignKey(Tenant, on_delete=models.CASCADE, related_name="api_keys")
    prefix = models.CharField(max_length=16, help_text="The key's first characters, to recognise it.")
    key_hash = models.CharField(max_length=64, unique=True)
    created_at = models.DateTimeField(auto_now_add=True)
    revoked_at = models.DateTimeField(null=True, blank=True)

    class Meta:
        verbose_name = "API key"
        ordering = ["-created_at"]

    def __str__(self) -> str:
        return f"{self.prefix}… ({self.tenant.slug})"


class StoredEvent(models.Model):
    """The ORM event store (CLOUDSCALE_EVENT_STORE=orm). One row per (tenant, event_id)."""

    tenant = models.CharField(max_length=64)
    event_id = models.CharField(max_length=64)
    event_type = models.CharField(max_length=32)
    user_id = models.CharField(max_length=128)
    session_id = models.CharField(max_length=128, blank=True, default="")
    properties = models.JSONField(default=dict)
    timestamp = models.DateTimeField(help_text="Event time, corrected for client clock skew.")
    client_timestamp = models.CharField(max_length=64, blank=True, default="")
    sent_at = models.CharField(max_length=64, blank=True, default="")
    received_at = models.DateTimeField()
    skew_corrected = models.BooleanField(default=False)
    timestamp_clamped = models.BooleanField(default=False)
    ip = models.CharField(max_length=64, blank=True, default="")
    user_agent = models.CharField(max_length=512, blank=True, default="")
    correlation_id = models.CharField(max_length=64, blank=True, default="")
    stored_at = models.DateTimeField(auto_now_add=True)

    class Meta:
        constraints = [models.UniqueConstraint(fields=["tenant", "event_id"], name="stored_event_once")]
        indexes = [
            # GET /api/events: newest first within a tenant, optionally by type or user.
            models.Index(fields=["tenant", "-timestamp", "-event_id"], name="event_tenant_time"),
            models.Index(fields=["tenant", "event_type", "-timestamp"], name="event_tenant_type_time"),
            models.Index(fields=["tenant", "user_id", "-timestamp"], name="event_tenant_user_time"),
            # The ledger counts per hour of arrival; retention purges by arrival.
            models.Index(fields=["tenant", "received_at"], name="event_tenant_received"),
            models.Index(fields=["received_at"], name="event_received"),
        ]

    def __str__(self) -> str:
        return f"{self.tenant}/{self.event_id}"
