"""Engagement scores per (tenant, user), and the cart-abandonment schedule and its outcomes."""

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


class CartCheck(models.Model):
    """A scheduled cart-abandonment check: one per add_to_cart event, due 30 min of event time later."""

    class Status(models.TextChoices):
        PENDING = "pending"
        CANCELLED = "cancelled", "cancelled by a purchase"
        FIRED = "fired", "abandoned"

    tenant = models.CharField(max_length=64)
    event_id = models.CharField(max_length=64, help_text="The add_to_cart event: the cart's id.")
    user_id = models.CharField(max_length=128)
    session_id = models.CharField(max_length=128, blank=True, default="")
    properties = models.JSONField(default=dict)
    added_at = models.DateTimeField(help_text="Event time of the add_to_cart.")
    due_at = models.DateTimeField(
        help_text="added_at + CART_ABANDONMENT_MINUTES; compared with the wall clock."
    )
    status = models.CharField(max_length=16, choices=Status.choices, default=Status.PENDING)
    created_at = models.DateTimeField(default=timezone.now)
    resolved_at = models.DateTimeField(null=True, blank=True)

    class Meta:
        constraints = [models.UniqueConstraint(fields=["tenant", "event_id"], name="cart_check_once")]
        indexes = [
            models.Index(fields=["status", "due_at"], name="cart_check_due"),
            models.Index(fields=["tenant", "user_id", "status"], name="cart_check_user"),
        ]
        ordering = ["due_at"]

    def __str__(self) -> str:
        return f"{self.tenant}/{self.user_id}/{self.event_id}"


class CartPurchase(models.Model):
    """A purchase seen by the actions step; a check is cancelled by a purchase in [added_at, due_at)."""

    tenant = models.CharField(max_length=64)
    event_id = models.CharField(max_length=64)
    user_id = models.CharField(max_length=128)
    purchased_at = models.DateTimeField(help_text="Event time of the purchase.")
    recorded_at = models.DateTimeField(default=timezone.now)

    class Meta:
        constraints = [models.UniqueConstraint(fields=["tenant", "event_id"], name="cart_purchase_once")]
        indexes = [
            models.Index(fields=["tenant", "user_id", "purchased_at"], name="cart_purchase_user"),
            models.Index(fields=["recorded_at"], name="cart_purchase_recorded"),
        ]

    def __str__(self) -> str:
        return f"{self.tenant}/{self.user_id}/{self.event_id}"


class CartAbandonment(models.Model):
    """One abandoned cart, and the delivery state of its webhook (at most one successful POST)."""

    class Webhook(models.TextChoices):
        NONE = "none", "no webhook URL"
        PENDING = "pending"
        SENDING = "sending"
        DELIVERED = "delivered"
        FAILED = "failed"

    tenant = models.CharField(max_length=64)
    cart_event_id = models.CharField(max_length=64, help_text="The add_to_cart event.")
    user_id = models.CharField(max_length=128)
    added_at = models.DateTimeField()
    due_at = models.DateTimeField()
    created_at = models.DateTimeField(default=timezone.now)
    payload = models.JSONField(
        help_text="The webhook body, fixed at creation so every attempt sends the same."
    )
    webhook_url = models.URLField(blank=True, max_length=500)
    webhook_status = models.CharField(max_length=16, choices=Webhook.choices, default=Webhook.NONE)
    webhook_attempts = models.PositiveIntegerField(default=0)
    next_attempt_at = models.DateTimeField(null=True, blank=True)
    lease_until = models.DateTimeField(null=True, blank=True)
    claim = models.CharField(
        max_length=32, blank=True, default="", help_text="Token of the sender holding it."
    )
    last_error = models.TextField(blank=True, default="")
    response_status = models.PositiveIntegerField(null=True, blank=True)
    delivered_at = models.DateTimeField(null=True, blank=True)

    class Meta:
        constraints = [
            models.UniqueConstraint(fields=["tenant", "cart_event_id"], name="cart_abandonment_once")
        ]
        indexes = [
            models.Index(fields=["webhook_status", "next_attempt_at"], name="cart_abandonment_webhook"),
            models.Index(fields=["tenant", "-created_at"], name="cart_abandonment_tenant"),
        ]
        ordering = ["-created_at", "-id"]

    def __str__(self) -> str:
        return f"{self.tenant}/{self.user_id}/{self.cart_event_id}"
