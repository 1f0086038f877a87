"""API-key lookups are cached per process, and a change to a tenant or key is seen at once."""

from __future__ import annotations

from typing import Any

import orjson
import pytest
from django.test import Client

from tenants.models import ApiKey, Tenant
from tenants.services import tenant_for_key, tenant_rotate_key, tenant_set_active
from tests.conftest import Actor

pytestmark = [pytest.mark.django_db, pytest.mark.core]

CLICK = {"event_type": "click", "user_id": "u-1"}


def send(client: Client, actor: Actor) -> int:
    response = client.post(
        "/api/events", orjson.dumps(CLICK), content_type="application/json", **actor.headers
    )
    return response.status_code


def test_a_repeated_lookup_does_not_touch_the_database(acme: Actor, django_assert_num_queries: Any) -> None:
    assert tenant_for_key(acme.key) is not None
    with django_assert_num_queries(0):
        tenant = tenant_for_key(acme.key)
    assert tenant is not None and tenant.slug == "acme"


def test_a_disabled_tenant_is_refused_on_its_next_request(client: Client, acme: Actor) -> None:
    assert send(client, acme) == 202
    tenant_set_active(slug="acme", active=False)
    assert send(client, acme) == 403


def test_a_tenant_disabled_in_the_admin_form_is_refused_on_its_next_request(
    client: Client, admin_client: Client, acme: Actor
) -> None:
    assert send(client, acme) == 202
    tenant = Tenant.objects.get(slug="acme")
    tenant.active = False
    tenant.save()  # what the admin's change form does
    assert send(client, acme) == 403


def test_a_rotated_key_is_refused_on_its_next_request(client: Client, acme: Actor) -> None:
    assert send(client, acme) == 202
    new = Actor("acme", tenant_rotate_key(slug="acme").key)
    assert send(client, acme) == 401
    assert send(client, new) == 202


def test_a_key_revoked_in_the_admin_is_refused_on_its_next_request(client: Client, acme: Actor) -> None:
    assert send(client, acme) == 202
    api_key = ApiKey.objects.get(tenant__slug="acme")
    api_key.revoked_at = api_key.created_at
    api_key.save()
    assert send(client, acme) == 401


def test_a_change_committed_by_another_process_is_seen(acme: Actor, state_redis: Any) -> None:
    assert tenant_for_key(acme.key) is not None  # cached
    Tenant.objects.filter(slug="acme").update(active=False)  # another process: no bump here...
    state_redis.incr("cloudscale:tenants:version")  # ...but its bump after commit reaches us
    tenant = tenant_for_key(acme.key)
    assert tenant is not None and tenant.active is False
