"""A tenant's data belongs to that tenant forever: slugs are frozen and never reused, tenants retired."""

from __future__ import annotations

import io

import orjson
import pytest
from django.core.exceptions import ValidationError
from django.core.management import CommandError, call_command
from django.test import Client

from events.stores.orm import OrmEventStore
from scoring.services import score_apply_batch
from tenants.models import Tenant, TenantsAreNeverDeleted
from tenants.services import TenantRetired, tenant_create, tenant_retire, tenant_set_active
from tests.conftest import Actor
from tests.events.pipeline_support import enriched_event

pytestmark = [pytest.mark.django_db, pytest.mark.core]


def test_a_deleted_and_recreated_slug_can_never_read_the_old_tenants_data(
    admin_client: Client, client: Client, acme: Actor
) -> None:
    old_event = enriched_event(tenant="acme", user_id="alice")
    OrmEventStore().write_many([old_event])
    score_apply_batch(tenant="acme", events=[old_event])
    tenant = Tenant.objects.get(slug="acme")

    # The admin offers no delete, neither the page nor the bulk action.
    assert admin_client.post(f"/admin/tenants/tenant/{tenant.pk}/delete/", {"post": "yes"}).status_code == 403
    changelist = admin_client.get("/admin/tenants/tenant/").content.decode()
    assert "delete_selected" not in changelist
    with pytest.raises(TenantsAreNeverDeleted):
        tenant.delete()
    with pytest.raises(TenantsAreNeverDeleted):
        Tenant.objects.filter(slug="acme").delete()

    # Retiring is the tombstone: keys revoked, and the slug is never free again.
    tenant_retire(slug="acme")
    assert client.get("/api/events", **acme.headers).status_code == 401
    with pytest.raises(ValidationError, match="slug"):
        tenant_create(slug="acme")
    with pytest.raises(CommandError, match="slug"):
        call_command("tenant", "create", "acme", stdout=io.StringIO(), stderr=io.StringIO())

    # A new tenant under another slug sees none of the old data.
    newcomer = Actor("acme2", tenant_create(slug="acme2").key)
    assert client.get("/api/events", **newcomer.headers).json()["results"] == []
    assert client.get("/api/users/alice/score", **newcomer.headers).status_code == 404
    response = client.post(
        "/api/events",
        orjson.dumps({"event_id": old_event["event_id"], "event_type": "click", "user_id": "bob"}),
        content_type="application/json",
        **newcomer.headers,
    )
    assert response.json()["status"] == "accepted"  # not the old tenant's duplicate


def test_a_slug_is_frozen_once_created(admin_client: Client, acme: Actor) -> None:
    tenant = Tenant.objects.get(slug="acme")
    tenant.slug = "acme-renamed"
    with pytest.raises(ValidationError, match="frozen"):
        tenant.save()
    page = admin_client.get(f"/admin/tenants/tenant/{tenant.pk}/change/").content.decode()
    assert 'name="slug"' not in page  # shown read-only, not as an input


def test_a_retired_tenant_cannot_be_enabled_or_get_keys(acme: Actor) -> None:
    tenant_retire(slug="acme")
    with pytest.raises(TenantRetired):
        tenant_set_active(slug="acme", active=True)
    with pytest.raises(CommandError, match="retired"):
        call_command("tenant", "rotate-key", "acme", stdout=io.StringIO(), stderr=io.StringIO())
    listing = io.StringIO()
    call_command("tenant", "list", stdout=listing)
    assert "retired" in listing.getvalue()
