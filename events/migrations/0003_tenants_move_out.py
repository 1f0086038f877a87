from django.db import migrations


class Migration(migrations.Migration):
    """Tenant and ApiKey now belong to the tenants app (their tables stay): forget them here."""

    dependencies = [
        ("events", "0002_deadletter"),
        ("tenants", "0001_initial"),
        ("fraud", "0002_tenant_moved"),
    ]

    operations = [
        migrations.SeparateDatabaseAndState(
            state_operations=[
                migrations.DeleteModel(name="ApiKey"),
                migrations.DeleteModel(name="Tenant"),
            ],
        ),
    ]
