import django.db.models.deletion
from django.db import migrations, models


class Migration(migrations.Migration):
    """The rule settings' tenant is now tenants.Tenant: the same table, so only the state changes."""

    dependencies = [
        ("fraud", "0001_initial"),
        ("tenants", "0001_initial"),
    ]

    operations = [
        migrations.SeparateDatabaseAndState(
            state_operations=[
                migrations.AlterField(
                    model_name="fraudrulesetting",
                    name="tenant",
                    field=models.ForeignKey(
                        on_delete=django.db.models.deletion.CASCADE,
                        related_name="fraud_rule_settings",
                        to="tenants.tenant",
                    ),
                ),
            ],
        ),
    ]
