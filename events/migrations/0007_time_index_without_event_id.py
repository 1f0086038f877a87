from django.db import migrations, models


class Migration(migrations.Migration):
    """The events' time index without the event id (docs/decisions.md): narrower entries to write,
    and SQLite's planner then picks the type and user indexes for their queries."""

    dependencies = [
        ("events", "0006_drop_event_received_index"),
    ]

    operations = [
        migrations.RemoveIndex(model_name="storedevent", name="event_tenant_time"),
        migrations.AddIndex(
            model_name="storedevent",
            index=models.Index(fields=["tenant", "-timestamp"], name="event_tenant_time"),
        ),
    ]
