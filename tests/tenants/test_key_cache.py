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


def test_a_change_by_another_process_is_seen_by_the_next_request(
    client: Client, acme: Actor, state_redis: Any
) -> None:
    """The request's lookup comes from the cache and is confirmed by the version the rate-limit
    script read: a bump by another process refuses the very next request."""
    assert send(client, acme) == 202  # cached
    Tenant.objects.filter(slug="acme").update(active=False)  # another process: no bump here...
    state_redis.incr("cloudscale:tenants:version")  # ...but its bump after commit reaches us
    assert send(client, acme) == 403


def test_a_request_refused_after_a_change_spends_the_anonymous_window(
    client: Client, acme: Actor, state_redis: Any
) -> None:
    """The limits are decided again for what the key is now: a disabled tenant's request spends the
    anonymous window, as any request without an active tenant does, not the tenants' one."""
    assert send(client, acme) == 202  # cached, and one request in the tenants' window
    tenants_window = sum(int(state_redis.get(k) or 0) for k in state_redis.scan_iter("rl:global:*"))
    tenant_set_active(slug="acme", active=False)
    assert send(client, acme) == 403
    assert sum(int(state_redis.get(k) or 0) for k in state_redis.scan_iter("rl:anonymous:*")) == 1
    assert sum(int(state_redis.get(k) or 0) for k in state_redis.scan_iter("rl:global:*")) == tenants_window


def test_a_cached_key_still_works_when_the_version_key_was_lost(
    client: Client, acme: Actor, state_redis: Any
) -> None:
    assert send(client, acme) == 202  # cached
    state_redis.delete("cloudscale:tenants:version")  # e.g. a Redis replaced without its data
    assert send(client, acme) == 202
    assert state_redis.get("cloudscale:tenants:version") is not None  # started again
    tenant_set_active(slug="acme", active=False)
    assert send(client, acme) == 403
