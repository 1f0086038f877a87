"""Ingestion warnings: why an event sent through an SDK endpoint was rejected or not mapped.

SDKs only look at the status of a whole request, so a bad event inside a good request cannot be
reported in the answer the way the native batch receipt does; it is recorded here instead, for the
tenant (`GET /api/ingestion-warnings`) and for operators (admin). Kept 30 days.
"""

from __future__ import annotations

from django.db import models


class IngestionWarning(models.Model):
    class Protocol(models.TextChoices):
        SEGMENT = "segment", "Segment / RudderStack"
        POSTHOG = "posthog", "PostHog"

    # The tenant's slug, like the event store's rows (no foreign key: warnings outlive nothing).
    tenant = models.CharField(max_length=64)
    time = models.DateTimeField(help_text="When the request arrived (the events' received_at).")
    protocol = models.CharField(max_length=16, choices=Protocol.choices)
    event_name = models.CharField(max_length=200, blank=True, default="")
    event_id = models.CharField(max_length=64, blank=True, default="")
    code = models.CharField(max_length=32)
    field = models.CharField(max_length=200, blank=True, default="")
    message = models.CharField(max_length=1000)
    correlation_id = models.CharField(max_length=64, blank=True, default="")

    class Meta:
        ordering = ["-time", "-id"]
        indexes = [
            # GET /api/ingestion-warnings: newest first within a tenant; retention purges by time.
            models.Index(fields=["tenant", "-time", "-id"], name="warning_tenant_time"),
            models.Index(fields=["time"], name="warning_time"),
        ]

    def __str__(self) -> str:
        return f"{self.tenant}: {self.code} ({self.event_name or 'no name'})"
