"""The ORM event store and the dead-letter store."""

from __future__ import annotations

from django.db import models

from events.shape import max_length


class StoredEvent(models.Model):
    """The ORM event store (CLOUDSCALE_EVENT_STORE=orm). One row per (tenant, event_id).

    The columns are the enriched event's fields (events/shape.py), with its lengths.
    """

    tenant = models.CharField(max_length=64)
    event_id = models.CharField(max_length=max_length("event_id"))
    event_type = models.CharField(max_length=max_length("event_type"))
    user_id = models.CharField(max_length=max_length("user_id"))
    session_id = models.CharField(max_length=max_length("session_id"), blank=True, default="")
    properties = models.JSONField(default=dict)
    timestamp = models.DateTimeField(help_text="Event time, corrected for client clock skew.")
    client_timestamp = models.CharField(max_length=max_length("client_timestamp"), blank=True, default="")
    sent_at = models.CharField(max_length=max_length("sent_at"), blank=True, default="")
    received_at = models.DateTimeField()
    skew_corrected = models.BooleanField(default=False)
    timestamp_clamped = models.BooleanField(default=False)
    ip = models.CharField(max_length=max_length("ip"), blank=True, default="")
    user_agent = models.CharField(max_length=max_length("user_agent"), blank=True, default="")
    correlation_id = models.CharField(max_length=max_length("correlation_id"), blank=True, default="")
    custom = models.BooleanField(default=False, help_text="A custom event: a name outside the catalog.")
    # The SDK's `context` (library, page, device...), bounded in size by the API; null for native events.
    context = models.JSONField(null=True, blank=True)
    stored_at = models.DateTimeField(auto_now_add=True)

    class Meta:
        constraints = [models.UniqueConstraint(fields=["tenant", "event_id"], name="stored_event_once")]
        indexes = [
            # GET /api/events: newest first within a tenant, optionally by type or user. Ties of
            # time are ordered by event id in a sort of the tie alone (docs/decisions.md, "The
            # events' time index without the event id").
            models.Index(fields=["tenant", "-timestamp"], name="event_tenant_time"),
            models.Index(fields=["tenant", "event_type", "-timestamp"], name="event_tenant_type_time"),
            models.Index(fields=["tenant", "user_id", "-timestamp"], name="event_tenant_user_time"),
            # The ledger counts per hour of arrival; retention purges by arrival, tenant by tenant
            # (OrmEventStore.purge_expired), so no index of arrival alone is kept up per insert.
            models.Index(fields=["tenant", "received_at"], name="event_tenant_received"),
        ]

    def __str__(self) -> str:
        return f"{self.tenant}/{self.event_id}"


class DeadLetter(models.Model):
    """A message or event the workers could not process, kept for review, requeue or discard.

    One row per distinct poison payload: `fingerprint` (reason, tenant, payload) is unique, so a
    redelivered message bumps `attempts`/`last_seen` instead of adding a row.
    """

    class Reason(models.TextChoices):
        DESERIALIZATION_FAILED = "DeserializationFailed"
        MISSING_EVENT_TYPE = "MissingEventType"
        UNKNOWN_EVENT_TYPE = "UnknownEventType"
        MAX_RETRIES_EXCEEDED = "MaxRetriesExceeded"

    class Status(models.TextChoices):
        PENDING = "pending"
        REQUEUED = "requeued"
        DISCARDED = "discarded"

    class RequeueOutcome(models.TextChoices):
        NONE = "", "not requeued"
        PUBLISHED = "published", "published, not processed yet"
        STORED = "stored", "stored"
        FAILED = "failed", "failed again"

    class Kind(models.TextChoices):
        EVENT = "event", "one event of a batch"
        BATCH = "batch", "a process_batch message with unusable arguments"
        RAW = "raw", "a broker message Celery could not decode"

    tenant = models.CharField(max_length=64, blank=True, default="", help_text="Empty when unknown.")
    reason = models.CharField(max_length=32, choices=Reason.choices)
    kind = models.CharField(max_length=8, choices=Kind.choices, default=Kind.EVENT)
    payload = models.BinaryField(help_text="The payload exactly as received (the event's JSON for events).")
    content_type = models.CharField(max_length=128, blank=True, default="")
    content_encoding = models.CharField(max_length=64, blank=True, default="")
    headers = models.JSONField(default=dict, blank=True, help_text="Broker message headers of raw messages.")
    error = models.TextField(blank=True, default="")
    attempts = models.PositiveIntegerField(default=1)
    correlation_id = models.CharField(max_length=64, blank=True, default="")
    # NULL, not "": the ledger counts rows whose event_id is known (`event_id IS NOT NULL`).
    event_id = models.CharField(max_length=128, null=True, blank=True)  # noqa: DJ001
    received_at = models.DateTimeField(null=True, blank=True, help_text="The event's arrival at the API.")
    fingerprint = models.CharField(max_length=64, unique=True)
    status = models.CharField(max_length=16, choices=Status.choices, default=Status.PENDING)
    first_seen = models.DateTimeField()
    last_seen = models.DateTimeField()
    status_changed_at = models.DateTimeField(null=True, blank=True)
    # Fix and reprocess: an operator's corrected copy of the event; `payload` stays as received.
    fixed_payload = models.BinaryField(
        null=True, blank=True, help_text="The operator's corrected event, published by the next requeue."
    )
    fixed_by = models.CharField(max_length=150, blank=True, default="")
    fixed_at = models.DateTimeField(null=True, blank=True)
    requeued_at = models.DateTimeField(null=True, blank=True)
    requeued_by = models.CharField(max_length=150, blank=True, default="")
    requeue_outcome = models.CharField(
        max_length=16, choices=RequeueOutcome.choices, blank=True, default=RequeueOutcome.NONE
    )
    requeue_error = models.TextField(blank=True, default="", help_text="Why the requeued event failed again.")
    # Audit trail, oldest first: {"at", "by", "action": fixed|requeued|stored|failed, ...}.
    history = models.JSONField(default=list, blank=True)

    class Meta:
        ordering = ["-last_seen", "-id"]
        indexes = [
            models.Index(fields=["status", "reason"], name="deadletter_status_reason"),
            # The loss ledger counts a tenant's dead-lettered events per hour of arrival.
            models.Index(fields=["tenant", "received_at"], name="deadletter_tenant_received"),
            # Every dead-letter write looks for requeued rows still waiting for their outcome: few.
            models.Index(
                fields=["tenant", "event_id"],
                name="deadletter_awaiting_outcome",
                condition=models.Q(requeue_outcome="published"),
            ),
        ]

    def __str__(self) -> str:
        return f"{self.reason} #{self.pk} ({self.tenant or 'unknown tenant'})"
