"""The cart-abandonment schedule (checks, purchases) and its outcomes (abandonments, webhooks).

The tables keep the names they had when carts lived in the scoring app.
"""

from __future__ import annotations

from django.db import models
from django.utils import timezone

# A user's pending checks, which a purchase cancels: named here because the cancelling UPDATE names
# it too, on SQLite (carts/services.py, `checks_cancel_statement`).
CART_CHECK_USER_INDEX = "cart_check_user"


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
        db_table = "scoring_cartcheck"
        constraints = [models.UniqueConstraint(fields=["tenant", "event_id"], name="cart_check_once")]
        indexes = [
            models.Index(fields=["status", "due_at"], name="cart_check_due"),
            models.Index(fields=["tenant", "user_id", "status"], name=CART_CHECK_USER_INDEX),
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
        db_table = "scoring_cartpurchase"
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
        db_table = "scoring_cartabandonment"
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
