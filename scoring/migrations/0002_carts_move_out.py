from django.db import migrations


class Migration(migrations.Migration):
    """The cart models now belong to the carts app (their tables stay): forget them here."""

    dependencies = [
        ("scoring", "0001_initial"),
        ("carts", "0001_initial"),
    ]

    operations = [
        migrations.SeparateDatabaseAndState(
            state_operations=[
                migrations.DeleteModel(
                    name="CartAbandonment",
                ),
                migrations.DeleteModel(
                    name="CartCheck",
                ),
                migrations.DeleteModel(
                    name="CartPurchase",
                ),
            ],
        ),
    ]
