"""Tenant and API-key services: create, rotate, disable, authenticate."""

from __future__ import annotations

import hashlib
import secrets
from dataclasses import dataclass

from django.core.exceptions import ValidationError
from django.db import transaction
from django.utils import timezone

from cloudscale_project.outbound import webhook_url_refusal
from events.models import ApiKey, Tenant

KEY_PREFIX = "cs_"
_KEY_ENTROPY_BYTES = 32


@dataclass(frozen=True)
class IssuedKey:
    tenant: Tenant
    key: str


def hash_api_key(key: str) -> str:
    return hashlib.sha256(key.encode()).hexdigest()


def _new_key() -> str:
    return KEY_PREFIX + secrets.token_urlsafe(_KEY_ENTROPY_BYTES)


def _issue_key(tenant: Tenant) -> str:
    key = _new_key()
    ApiKey.objects.create(tenant=tenant, prefix=key[:10], key_hash=hash_api_key(key))
    return key


def new_webhook_secret() -> str:
    """The HMAC key of a tenant's webhooks: without one, webhooks are not sent at all."""
    return secrets.token_hex(32)


@transaction.atomic
def tenant_create(*, slug: str, name: str = "", webhook_url: str = "") -> IssuedKey:
    tenant = Tenant(
        slug=slug, name=name or slug, webhook_url=webhook_url, webhook_secret=new_webhook_secret()
    )
    tenant.full_clean()
    refusal = webhook_url_refusal(webhook_url) if webhook_url else None
    if refusal:
        raise ValidationError({"webhook_url": [refusal]})
    tenant.save()
    return IssuedKey(tenant=tenant, key=_issue_key(tenant))


@transaction.atomic
def tenant_rotate_key(*, slug: str) -> IssuedKey:
    """Revoke every live key of the tenant and issue a new one."""
    tenant = Tenant.objects.select_for_update().get(slug=slug)
    ApiKey.objects.filter(tenant=tenant, revoked_at__isnull=True).update(revoked_at=timezone.now())
    return IssuedKey(tenant=tenant, key=_issue_key(tenant))


def tenant_set_active(*, slug: str, active: bool) -> Tenant:
    updated = Tenant.objects.filter(slug=slug).update(active=active)
    if updated != 1:
        raise Tenant.DoesNotExist(f"no tenant {slug!r}")
    return Tenant.objects.get(slug=slug)


def tenant_for_key(key: str) -> Tenant | None:
    """The tenant a live key belongs to (active or not: the caller decides 401 vs 403)."""
    if not key.startswith(KEY_PREFIX) or len(key) > 100:
        return None
    api_key = (
        ApiKey.objects.select_related("tenant")
        .filter(key_hash=hash_api_key(key), revoked_at__isnull=True)
        .first()
    )
    return api_key.tenant if api_key else None
