"""Tenants and carts moved into apps of their own without moving a row: an old database still starts."""

from __future__ import annotations

import pytest
from django.db import connection
from django.db.migrations.executor import MigrationExecutor

# The last migrations before tenants and carts had apps of their own.
BEFORE_THE_MOVE = [("events", "0002_deadletter"), ("fraud", "0001_initial"), ("scoring", "0001_initial")]
# ...when the tenants and carts apps had no migration applied yet.
NEW_APPS_UNAPPLIED = [("tenants", None), ("carts", None)]


@pytest.mark.core
@pytest.mark.django_db(transaction=True)
def test_it_keeps_tenants_keys_rule_settings_and_carts_of_a_database_from_before_the_move() -> None:
    executor = MigrationExecutor(connection)
    executor.migrate([*BEFORE_THE_MOVE, *NEW_APPS_UNAPPLIED])
    old = executor.loader.project_state(BEFORE_THE_MOVE).apps
    tenant = old.get_model("events", "Tenant").objects.create(slug="acme", name="Acme")
    old.get_model("events", "ApiKey").objects.create(tenant=tenant, prefix="cs_x", key_hash="h" * 64)
    old.get_model("fraud", "FraudRuleSetting").objects.create(
        tenant=tenant, rule="purchase_velocity", threshold=7, window_seconds=600
    )
    old.get_model("scoring", "CartCheck").objects.create(
        tenant="acme",
        event_id="e-1",
        user_id="u-1",
        added_at="2026-11-30T10:00:00Z",
        due_at="2026-11-30T10:30:00Z",
    )

    executor = MigrationExecutor(connection)
    executor.migrate(executor.loader.graph.leaf_nodes())

    from carts.models import CartCheck
    from fraud.models import FraudRuleSetting
    from tenants.models import ApiKey, Tenant

    assert Tenant.objects.get().slug == "acme"
    assert ApiKey.objects.get().key_hash == "h" * 64
    assert FraudRuleSetting.objects.get().tenant.slug == "acme"
    assert CartCheck.objects.get().event_id == "e-1"
