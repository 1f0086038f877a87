from typing import Any

import django.db.models.deletion
from django.db import migrations, models

_MODELS = ["tenant", "apikey"]


def _relabel_content_types(apps: Any, schema_editor: Any) -> None:
    """Keep admin history and permissions attached: the content types follow their models."""
    content_type = apps.get_model("contenttypes", "ContentType")
    content_type.objects.filter(app_label="events", model__in=_MODELS).update(app_label="tenants")


def _unrelabel_content_types(apps: Any, schema_editor: Any) -> None:
    content_type = apps.get_model("contenttypes", "ContentType")
    content_type.objects.filter(app_label="tenants", model__in=_MODELS).update(app_label="events")


class Migration(migrations.Migration):
    """Tenant and ApiKey move here from the events app: same tables (events_tenant, events_apikey), no data moves."""

    initial = True

    dependencies = [
        ("contenttypes", "0002_remove_content_type_name"),
        ("events", "0002_deadletter"),
    ]

    operations = [
        migrations.SeparateDatabaseAndState(
            state_operations=[
                migrations.CreateModel(
                    name="Tenant",
                    fields=[
                        (
                            "id",
                            models.BigAutoField(
                                auto_created=True, primary_key=True, serialize=False, verbose_name="ID"
                            ),
                        ),
                        ("slug", models.SlugField(max_length=64, unique=True)),
                        ("name", models.CharField(max_length=200)),
                        (
                            "active",
                            models.BooleanField(default=True, help_text="A disabled tenant's keys get 403."),
                        ),
                        ("created_at", models.DateTimeField(auto_now_add=True)),
                        (
                            "webhook_url",
                            models.URLField(blank=True, help_text="Receives signed cart-abandonment POSTs."),
                        ),
                        (
                            "webhook_secret",
                            models.CharField(
                                blank=True, help_text="HMAC-SHA256 key of webhooks.", max_length=128
                            ),
                        ),
                        ("settings", models.JSONField(blank=True, default=dict)),
                    ],
                    options={
                        "db_table": "events_tenant",
                        "ordering": ["slug"],
                    },
                ),
                migrations.CreateModel(
                    name="ApiKey",
                    fields=[
                        (
                            "id",
                            models.BigAutoField(
                                auto_created=True, primary_key=True, serialize=False, verbose_name="ID"
                            ),
                        ),
                        (
                            "prefix",
                            models.CharField(
                                help_text="The key's first characters, to recognise it.", max_length=16
                            ),
                        ),
                        ("key_hash", models.CharField(max_length=64, unique=True)),
                        ("created_at", models.DateTimeField(auto_now_add=True)),
                        ("revoked_at", models.DateTimeField(blank=True, null=True)),
                        (
                            "tenant",
                            models.ForeignKey(
                                on_delete=django.db.models.deletion.CASCADE,
                                related_name="api_keys",
                                to="tenants.tenant",
                            ),
                        ),
                    ],
                    options={
                        "verbose_name": "API key",
                        "db_table": "events_apikey",
                        "ordering": ["-created_at"],
                    },
                ),
            ],
        ),
        migrations.RunPython(_relabel_content_types, _unrelabel_content_types),
    ]
