"""A per-process cache of API-key lookups, invalidated exactly: every tenant or key change bumps a
version in the shared-state Redis after its commit, and a cached lookup is used only while the
version it was read under is still current.

So a disabled tenant, a revoked or rotated key is refused by every API process on its next request
(one Redis GET instead of a database join per lookup). If the shared state is unreachable the
cache is bypassed; `TTL_SECONDS` bounds how long an entry can outlive a bump that was lost while
Redis was away.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable
from typing import TYPE_CHECKING

from django.db import transaction

from cloudscale_project.state import STATE_ERRORS, state_redis

if TYPE_CHECKING:
    from tenants.models import ApiKey

logger = logging.getLogger(__name__)

VERSION_KEY = "cloudscale:tenants:version"
# A backstop for a version bump lost while Redis was down, not the invalidation mechanism.
TTL_SECONDS = 60.0
# Entries kept per process; past it the cache starts over (a tenant count, not a request count).
MAX_ENTRIES = 10_000

_entries: dict[str, tuple[int, float, ApiKey]] = {}
_lock = threading.Lock()


def _current_version() -> int | None:
    try:
        return int(state_redis().get(VERSION_KEY) or 0)
    except STATE_ERRORS:
        return None


def cached_lookup(key_hash: str, load: Callable[[], ApiKey | None]) -> ApiKey | None:
    """The live key of `key_hash`, from the cache while no tenant or key changed since it was read.

    Unknown keys are not cached: random keys must not evict the real ones.
    """
    version = _current_version()
    if version is None:
        return load()
    now = time.monotonic()
    hit = _entries.get(key_hash)
    if hit is not None and hit[0] == version and now - hit[1] < TTL_SECONDS:
        return hit[2]
    api_key = load()  # read after the version: a change committed meanwhile bumps it again
    if api_key is not None:
        with _lock:
            if len(_entries) >= MAX_ENTRIES:
                _entries.clear()
            _entries[key_hash] = (version, now, api_key)
    return api_key


def tenants_changed() -> None:
    """Call after any change to a tenant or key: every process drops its cached lookups.

    Bumped at once (so this very transaction's later lookups see the change) and again after the
    commit: between the two, another process may read and cache the old committed state, and the
    second bump drops that.
    """
    _bump()
    transaction.on_commit(_bump)


def _bump() -> None:
    try:
        state_redis().incr(VERSION_KEY)
    except STATE_ERRORS:
        logger.warning("could not bump %s: cached key lookups may lag up to %s s", VERSION_KEY, TTL_SECONDS)
