"""Tenant and API-key services: create, rotate, disable, authenticate."""

from __future__ import annotations

import hashlib
import secrets
from collections.abc import Iterator
from contextlib import contextmanager
from contextvars import ContextVar
from dataclasses import dataclass

from django.core.exceptions import ValidationError
from django.db import transaction
from django.utils import timezone

from cloudscale_project.outbound import webhook_url_refusal
from tenants.keycache import VERSION_KEY, cached_lookup, cached_lookup_at, cached_peek, tenants_changed
from tenants.models import ApiKey, Tenant

KEY_PREFIX = "cs_"
# The tenant `make run` creates and `manage.py loadgen` sends to by default.
DEMO_TENANT = "demo"
_KEY_ENTROPY_BYTES = 32


@dataclass(frozen=True)
class IssuedKey:
    tenant: Tenant
    key: str


def hash_api_key(key: str) -> str:
    return hashlib.sha256(key.encode()).hexdigest()


def _new_key() -> str:
    return KEY_PREFIX + secrets.token_urlsafe(_KEY_ENTROPY_BYTES)


def _issue_key(tenant: Tenant, scope: str = ApiKey.Scope.FULL) -> str:
    key = _new_key()
    ApiKey.objects.create(tenant=tenant, prefix=key[:10], key_hash=hash_api_key(key), scope=scope)
    return key


class TenantRetired(Exception):
    """The tenant was retired: it gets no new keys and cannot be enabled again."""


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


def _live_tenant_for_update(slug: str) -> Tenant:
    tenant = Tenant.objects.select_for_update().get(slug=slug)
    if tenant.retired_at is not None:
        raise TenantRetired(f"Tenant {slug!r} was retired; its slug stays taken.")
    return tenant


@transaction.atomic
def tenant_rotate_key(*, slug: str) -> IssuedKey:
    """Revoke every live key of the tenant and issue a new (full) one."""
    tenant = _live_tenant_for_update(slug)
    ApiKey.objects.filter(tenant=tenant, revoked_at__isnull=True).update(revoked_at=timezone.now())
    tenants_changed()
    return IssuedKey(tenant=tenant, key=_issue_key(tenant))


@transaction.atomic
def tenant_create_key(*, slug: str, scope: str) -> IssuedKey:
    """A further key for the tenant; its other keys stay valid. `ingest` keys may only send events."""
    if scope not in ApiKey.Scope.values:
        raise ValueError(f"scope must be one of {', '.join(ApiKey.Scope.values)}")
    tenant = _live_tenant_for_update(slug)
    return IssuedKey(tenant=tenant, key=_issue_key(tenant, scope))


def tenant_set_active(*, slug: str, active: bool) -> Tenant:
    # A retired tenant stays disabled: enabling it is refused, disabling it again is harmless.
    rows = Tenant.objects.filter(slug=slug)
    updated = (rows.filter(retired_at__isnull=True) if active else rows).update(active=active)
    tenants_changed()
    if updated != 1:
        if rows.exists():
            raise TenantRetired(f"Tenant {slug!r} was retired; it cannot be enabled again.")
        raise Tenant.DoesNotExist(f"no tenant {slug!r}")
    return Tenant.objects.get(slug=slug)


@transaction.atomic
def tenant_retire(*, slug: str) -> Tenant:
    """The tombstone of a tenant: disabled for good, every key revoked, the slug never free again.

    Tenants are never deleted: every row and Redis key of a tenant's data carries its slug, so a new
    tenant under a reused slug would read the old one's events and scores and see its event ids
    as duplicates.
    """
    tenant = Tenant.objects.select_for_update().get(slug=slug)
    now = timezone.now()
    ApiKey.objects.filter(tenant=tenant, revoked_at__isnull=True).update(revoked_at=now)
    tenants_changed()
    if tenant.retired_at is None:
        Tenant.objects.filter(pk=tenant.pk).update(active=False, retired_at=now)
        tenant.refresh_from_db()
    return tenant


# The lookups of the request being handled (see `key_lookups_per_request`); None outside one.
_request_lookups: ContextVar[dict[str, ApiKey | None] | None] = ContextVar(
    "request_key_lookups", default=None
)


@contextmanager
def key_lookups_per_request() -> Iterator[None]:
    """Within this block (one request), a key is looked up once: the rate limiter and the
    authentication both need it, and each lookup costs a Redis round trip (the cache's version).
    A change to the key made while the request runs is seen by the next request, as before."""
    token = _request_lookups.set({})
    try:
        yield
    finally:
        _request_lookups.reset(token)


def _plausible(key: str) -> bool:
    return key.startswith(KEY_PREFIX) and len(key) <= 100


def _load_live_key(key_hash: str) -> ApiKey | None:
    return ApiKey.objects.select_related("tenant").filter(key_hash=key_hash, revoked_at__isnull=True).first()


def _remember(key: str, api_key: ApiKey | None) -> ApiKey | None:
    looked_up = _request_lookups.get()
    if looked_up is not None:
        looked_up[key] = api_key
    return api_key


def api_key_lookup(key: str) -> ApiKey | None:
    """The live key (with its tenant, active or not: the caller decides 401 vs 403)."""
    if not _plausible(key):
        return None
    looked_up = _request_lookups.get()
    if looked_up is not None and key in looked_up:
        return looked_up[key]
    key_hash = hash_api_key(key)
    return _remember(key, cached_lookup(key_hash, lambda: _load_live_key(key_hash)))


@dataclass(frozen=True)
class KeyGuess:
    """A key's cached lookup, not yet confirmed: `version` is the one it was read under, and
    `version_key` the shared-state key whose current value confirms it (`api_key_confirm`)."""

    key: str
    key_hash: str
    api_key: ApiKey
    version: int
    version_key: str = VERSION_KEY


def api_key_guess(key: str) -> KeyGuess | None:
    """The key's cached live lookup without reading the cache's version (None if not cached).

    For a caller that reads the version in a Redis round trip it makes anyway (the rate limiter's
    script) and then calls `api_key_confirm`: one round trip per request fewer than
    `api_key_lookup`, whose GET of the version was 7.6 % of a single-event request's API CPU
    (docs/benchmarks.md, "Levers, eighth round").
    """
    if not _plausible(key):
        return None
    key_hash = hash_api_key(key)
    hit = cached_peek(key_hash)
    if hit is None:
        return None
    return KeyGuess(key=key, key_hash=key_hash, api_key=hit[1], version=hit[0])


def api_key_confirm(guess: KeyGuess, version: int | None) -> ApiKey | None:
    """The live key of `guess`, given the version current now: the guess itself if nothing changed
    since it was cached, else the key looked up again. Later lookups of the same request
    (`key_lookups_per_request`) reuse the answer."""
    if version is None:  # the version key is missing (a flushed Redis): the ordinary lookup
        looked_up = _request_lookups.get()
        if looked_up is not None:
            looked_up.pop(guess.key, None)
        return api_key_lookup(guess.key)
    if version == guess.version:
        return _remember(guess.key, guess.api_key)
    api_key = cached_lookup_at(guess.key_hash, lambda: _load_live_key(guess.key_hash), version=version)
    return _remember(guess.key, api_key)


def tenant_for_key(key: str) -> Tenant | None:
    """The tenant a live key belongs to (active or not: the caller decides 401 vs 403)."""
    api_key = api_key_lookup(key)
    return api_key.tenant if api_key else None
