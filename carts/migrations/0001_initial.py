from typing import Any

import django.utils.timezone
from django.db import migrations, models

_MODELS = ["cartcheck", "cartpurchase", "cartabandonment"]


def _relabel_content_types(apps: Any, schema_editor: Any) -> None:
    """Keep admin history and permissions attached: the content types follow their models."""
    content_type = apps.get_model("contenttypes", "ContentType")
    content_type.objects.filter(app_label="scoring", model__in=_MODELS).update(app_label="carts")


def _unrelabel_content_types(apps: Any, schema_editor: Any) -> None:
    content_type = apps.get_model("contenttypes", "ContentType")
    content_type.objects.filter(app_label="carts", model__in=_MODELS).update(app_label="scoring")


class Migration(migrations.Migration):
    """The cart models move here from the scoring app: same tables (scoring_cart*), no data moves."""

    initial = True

    dependencies = [
        ("contenttypes", "0002_remove_content_type_name"),
        ("scoring", "0001_initial"),
    ]

    operations = [
        migrations.SeparateDatabaseAndState(
            state_operations=[
                migrations.CreateModel(
                    name="CartAbandonment",
                    fields=[
                        (
                            "id",
                            models.BigAutoField(
                                auto_created=True, primary_key=True, serialize=False, verbose_name="ID"
                            ),
                        ),
                        ("tenant", models.CharField(max_length=64)),
                        (
                            "cart_event_id",
                            models.CharField(help_text="The add_to_cart event.", max_length=64),
                        ),
                        ("user_id", models.CharField(max_length=128)),
                        ("added_at", models.DateTimeField()),
                        ("due_at", models.DateTimeField()),
                        ("created_at", models.DateTimeField(default=django.utils.timezone.now)),
                        (
                            "payload",
                            models.JSONField(
                                help_text="The webhook body, fixed at creation so every attempt sends the same."
                            ),
                        ),
                        ("webhook_url", models.URLField(blank=True, max_length=500)),
                        (
                            "webhook_status",
                            models.CharField(
                                choices=[
                                    ("none", "no webhook URL"),
                                    ("pending", "Pending"),
                                    ("sending", "Sending"),
                                    ("delivered", "Delivered"),
                                    ("failed", "Failed"),
                                ],
                                default="none",
                                max_length=16,
                            ),
                        ),
                        ("webhook_attempts", models.PositiveIntegerField(default=0)),
                        ("next_attempt_at", models.DateTimeField(blank=True, null=True)),
                        ("lease_until", models.DateTimeField(blank=True, null=True)),
                        (
                            "claim",
                            models.CharField(
                                blank=True,
                                default="",
                                help_text="Token of the sender holding it.",
                                max_length=32,
                            ),
                        ),
                        ("last_error", models.TextField(blank=True, default="")),
                        ("response_status", models.PositiveIntegerField(blank=True, null=True)),
                        ("delivered_at", models.DateTimeField(blank=True, null=True)),
                    ],
                    options={
                        "db_table": "scoring_cartabandonment",
                        "ordering": ["-created_at", "-id"],
                        "indexes": [
                            models.Index(
                                fields=["webhook_status", "next_attempt_at"], name="cart_abandonment_webhook"
                            ),
                            models.Index(fields=["tenant", "-created_at"], name="cart_abandonment_tenant"),
                        ],
                        "constraints": [
                            models.UniqueConstraint(
                                fields=("tenant", "cart_event_id"), name="cart_abandonment_once"
                            )
                        ],
                    },
                ),
                migrations.CreateModel(
                    name="CartCheck",
                    fields=[
                        (
                            "id",
                            models.BigAutoField(
                                auto_created=True, primary_key=True, serialize=False, verbose_name="ID"
                            ),
                        ),
                        ("tenant", models.CharField(max_length=64)),
                        (
                            "event_id",
                            models.CharField(
                                help_text="The add_to_cart event: the cart's id.", max_length=64
                            ),
                        ),
                        ("user_id", models.CharField(max_length=128)),
                        ("session_id", models.CharField(blank=True, default="", max_length=128)),
                        ("properties", models.JSONField(default=dict)),
                        ("added_at", models.DateTimeField(help_text="Event time of the add_to_cart.")),
                        (
                            "due_at",
                            models.DateTimeField(
                                help_text="added_at + CART_ABANDONMENT_MINUTES; compared with the wall clock."
                            ),
                        ),
                        (
                            "status",
                            models.CharField(
                                choices=[
                                    ("pending", "Pending"),
                                    ("cancelled", "cancelled by a purchase"),
                                    ("fired", "abandoned"),
                                ],
                                default="pending",
                                max_length=16,
                            ),
                        ),
                        ("created_at", models.DateTimeField(default=django.utils.timezone.now)),
                        ("resolved_at", models.DateTimeField(blank=True, null=True)),
                    ],
                    options={
                        "db_table": "scoring_cartcheck",
                        "ordering": ["due_at"],
                        "indexes": [
                            models.Index(fields=["status", "due_at"], name="cart_check_due"),
                            models.Index(fields=["tenant", "user_id", "status"], name="cart_check_user"),
                        ],
                        "constraints": [
                            models.UniqueConstraint(fields=("tenant", "event_id"), name="cart_check_once")
                        ],
                    },
                ),
                migrations.CreateModel(
                    name="CartPurchase",
                    fields=[
                        (
                            "id",
                            models.BigAutoField(
                                auto_created=True, primary_key=True, serialize=False, verbose_name="ID"
                            ),
                        ),
                        ("tenant", models.CharField(max_length=64)),
                        ("event_id", models.CharField(max_length=64)),
                        ("user_id", models.CharField(max_length=128)),
                        ("purchased_at", models.DateTimeField(help_text="Event time of the purchase.")),
                        ("recorded_at", models.DateTimeField(default=django.utils.timezone.now)),
                    ],
                    options={
                        "db_table": "scoring_cartpurchase",
                        "indexes": [
                            models.Index(
                                fields=["tenant", "user_id", "purchased_at"], name="cart_purchase_user"
                            ),
                            models.Index(fields=["recorded_at"], name="cart_purchase_recorded"),
                        ],
                        "constraints": [
                            models.UniqueConstraint(fields=("tenant", "event_id"), name="cart_purchase_once")
                        ],
                    },
                ),
            ],
        ),
        migrations.RunPython(_relabel_content_types, _unrelabel_content_types),
    ]
