from __future__ import annotations

import io

import pytest
from django.core.management import CommandError, call_command

from tenants.models import ApiKey, Tenant
from tenants.services import hash_api_key, tenant_for_key

pytestmark = [pytest.mark.django_db, pytest.mark.core]


def run_tenant(*args: str) -> list[str]:
    out = io.StringIO()
    call_command("tenant", *args, stdout=out, stderr=io.StringIO())
    return out.getvalue().strip().splitlines()


def test_it_creates_a_tenant_and_prints_only_the_key_on_the_last_line() -> None:
    lines = run_tenant("create", "initech", "--name", "Initech")
    key = lines[-1]
    assert key.startswith("cs_") and " " not in key
    tenant = Tenant.objects.get(slug="initech")
    assert tenant.name == "Initech" and tenant.active
    assert tenant_for_key(key) == tenant


def test_it_stores_keys_hashed_never_in_clear() -> None:
    key = run_tenant("create", "initech")[-1]
    stored = ApiKey.objects.get(tenant__slug="initech")
    assert stored.key_hash == hash_api_key(key)
    assert key not in (stored.key_hash, stored.prefix)


def test_rotate_key_revokes_the_old_key() -> None:
    old = run_tenant("create", "initech")[-1]
    new = run_tenant("rotate-key", "initech")[-1]
    assert new != old
    assert tenant_for_key(old) is None
    assert tenant_for_key(new) is not None and tenant_for_key(new).slug == "initech"  # type: ignore[union-attr]


def test_disable_keeps_the_key_but_marks_the_tenant_inactive() -> None:
    key = run_tenant("create", "initech")[-1]
    run_tenant("disable", "initech")
    tenant = tenant_for_key(key)
    assert tenant is not None and tenant.active is False


def test_list_shows_every_tenant() -> None:
    run_tenant("create", "initech")
    run_tenant("create", "hooli")
    listing = "\n".join(run_tenant("list"))
    assert "initech" in listing and "hooli" in listing


def test_it_refuses_a_duplicate_slug_with_a_clear_message() -> None:
    run_tenant("create", "initech")
    with pytest.raises(CommandError, match="slug"):
        run_tenant("create", "initech")


def test_it_names_an_unknown_tenant() -> None:
    with pytest.raises(CommandError, match="No tenant with slug 'nobody'"):
        run_tenant("rotate-key", "nobody")
