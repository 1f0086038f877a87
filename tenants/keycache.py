"""A per-process cache of API-key lookups, invalidated exactly: every tenant or key change bumps a
version in the shared-state Redis after its commit, and a cached lookup is used only while the
version it was read under is still current (cloudscale_project/versioned_cache.py).

So a disabled tenant, a revoked or rotated key is refused by every API process on its next request
(one Redis GET instead of a database join per lookup; in the API none, since the rate-limit script
reads the version: `cached_peek`, events/middleware.py). If the shared state is unreachable the
cache is bypassed; `TTL_SECONDS` bounds how long an entry can outlive a bump that was lost while
Redis was away.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING

from cloudscale_project.versioned_cache import VersionedCache

if TYPE_CHECKING:
    from tenants.models import ApiKey

VERSION_KEY = "cloudscale:tenants:version"
# A backstop for a version bump lost while Redis was down, not the invalidation mechanism.
TTL_SECONDS = 60.0
# Entries kept per process; past it the cache starts over (a tenant count, not a request count).
MAX_ENTRIES = 10_000

_cache: VersionedCache[str, ApiKey | None] = VersionedCache(
    VERSION_KEY, ttl_seconds=TTL_SECONDS, max_entries=MAX_ENTRIES
)


def cached_lookup(key_hash: str, load: Callable[[], ApiKey | None]) -> ApiKey | None:
    """The live key of `key_hash`, from the cache while no tenant or key changed since it was read.

    Unknown keys are not cached: random keys must not evict the real ones.
    """
    return _cache.get(key_hash, load, keep=lambda api_key: api_key is not None)


def cached_peek(key_hash: str) -> tuple[int, ApiKey] | None:
    """The cached live key of `key_hash` and the version it was read under, not yet confirmed."""
    hit = _cache.peek(key_hash)
    if hit is None or hit[1] is None:
        return None
    return hit[0], hit[1]


def cached_lookup_at(
    key_hash: str, load: Callable[[], ApiKey | None], *, version: int | None
) -> ApiKey | None:
    """`cached_lookup` with the current version already read (see `cached_peek`)."""
    return _cache.get_at(key_hash, load, version=version, keep=lambda api_key: api_key is not None)


def tenants_changed() -> None:
    """Call after any change to a tenant or key: every process drops its cached lookups."""
    _cache.changed()
