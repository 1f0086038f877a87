"""Engagement scores per (tenant, user)."""

from __future__ import annotations

from django.db import models
from django.utils import timezone

from scoring.weights import WEIGHTS


class ScoredEvent(models.Model):
    """An event whose contribution is in its user's score: the unique row makes scoring idempotent.

    Inserted with ON CONFLICT DO NOTHING RETURNING in the same transaction as the score update: the
    rows the insert returns are the events that call applied; `batch` is that call's token.
    """

    tenant = models.CharField(max_length=64)
    event_id = models.CharField(max_length=64)
    batch = models.CharField(max_length=32, help_text="Token of the call that applied the event.")
    applied_at = models.DateTimeField(default=timezone.now)

    class Meta:
        constraints = [models.UniqueConstraint(fields=["tenant", "event_id"], name="scored_event_once")]
        indexes = [models.Index(fields=["applied_at"], name="scored_event_applied")]

    def __str__(self) -> str:
        return f"{self.tenant}/{self.event_id}"


class UserScore(models.Model):
    """A user's score as its value at SCORE_EPOCH (scoring/weights.py); `score_now()` decays it."""

    tenant = models.CharField(max_length=64)
    user_id = models.CharField(max_length=128)
    score_at_epoch = models.FloatField(default=0.0)
    events_counted = models.PositiveIntegerField(default=0)
    page_view_count = models.PositiveIntegerField(default=0)
    click_count = models.PositiveIntegerField(default=0)
    search_count = models.PositiveIntegerField(default=0)
    add_to_cart_count = models.PositiveIntegerField(default=0)
    remove_from_cart_count = models.PositiveIntegerField(default=0)
    checkout_started_count = models.PositiveIntegerField(default=0)
    purchase_count = models.PositiveIntegerField(default=0)
    login_count = models.PositiveIntegerField(default=0)
    login_failed_count = models.PositiveIntegerField(default=0)
    signup_count = models.PositiveIntegerField(default=0)
    last_event_at = models.DateTimeField(help_text="Latest event time seen for the user.")
    created_at = models.DateTimeField(default=timezone.now)
    updated_at = models.DateTimeField(default=timezone.now)

    class Meta:
        constraints = [models.UniqueConstraint(fields=["tenant", "user_id"], name="user_score_once")]
        ordering = ["tenant", "user_id"]

    def __str__(self) -> str:
        return f"{self.tenant}/{self.user_id}"

    def counts(self) -> dict[str, int]:
        return {event_type: getattr(self, f"{event_type}_count") for event_type in WEIGHTS}
