"""A new API key is shown once in the admin and never travels in a cookie."""

from __future__ import annotations

import re
from http.cookies import SimpleCookie
from typing import Any

import pytest
from django.contrib.sessions.models import Session
from django.test import Client

from tenants.models import Tenant
from tenants.services import tenant_create, tenant_for_key

pytestmark = [pytest.mark.django_db, pytest.mark.core]


def cookies_set(response: Any) -> str:
    jar: SimpleCookie = response.cookies
    return " ".join(f"{morsel.key}={morsel.value}" for morsel in jar.values())


def shown_keys(html: str) -> list[str]:
    return re.findall(r"\bcs_[A-Za-z0-9_-]+", html)


def sessions_hold(text: str) -> bool:
    return any(text in str(session.get_decoded()) for session in Session.objects.all())


def test_a_new_tenants_key_is_shown_once_and_is_in_no_cookie(admin_client: Client) -> None:
    created = admin_client.post("/admin/tenants/tenant/add/", {"slug": "initech", "name": "Initech", "active": "on",
                                "api_keys-TOTAL_FORMS": "0", "api_keys-INITIAL_FORMS": "0"})  # fmt: skip
    assert created.status_code == 302, created.content[:2000]
    shown = admin_client.get(created["Location"])
    [key] = shown_keys(shown.content.decode())
    tenant = tenant_for_key(key)
    assert tenant is not None and tenant.slug == "initech"  # a working key of the new tenant

    assert key not in cookies_set(created) and key not in cookies_set(shown)
    assert "messages" not in created.cookies and "messages" not in shown.cookies
    assert not sessions_hold(key)  # shown, so gone from the server-side session too
    assert key not in admin_client.get(created["Location"]).content.decode()


def test_a_rotated_key_is_shown_once_and_is_in_no_cookie(admin_client: Client) -> None:
    old = tenant_create(slug="acme", name="Acme").key
    tenant = Tenant.objects.get(slug="acme")
    rotated = admin_client.post(
        "/admin/tenants/tenant/", {"action": "rotate_keys", "_selected_action": [tenant.pk]}
    )
    assert rotated.status_code == 302
    shown = admin_client.get(rotated["Location"])
    [key] = shown_keys(shown.content.decode())
    assert key != old and tenant_for_key(key) is not None and tenant_for_key(old) is None
    assert key not in cookies_set(rotated) and key not in cookies_set(shown)
    assert "messages" not in rotated.cookies
    assert key not in admin_client.get(rotated["Location"]).content.decode()
