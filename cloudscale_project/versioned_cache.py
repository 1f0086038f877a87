"""Per-process caches invalidated exactly through a version in the shared-state Redis.

Every change bumps the version at once and again after its commit; an entry is used only while the
version it was read under is still current, so every process sees a change on its next read at the
cost of one Redis GET, or of none where the caller reads the version in a round trip it makes anyway
(`peek`, then `get_at`). If the shared state is unreachable the cache is bypassed. The TTL only
bounds how long an entry can outlive a bump that was lost while Redis was away.

A version key that is missing (a flushed or replaced Redis) starts again from a random number, not
from 0: a count that restarted at 0 would climb back to versions that entries cached before were
read under, and make them look current.
"""

from __future__ import annotations

import logging
import secrets
import threading
import time
from collections.abc import Callable, Hashable
from typing import Generic, TypeVar

from django.db import transaction

from cloudscale_project.state import STATE_ERRORS, state_redis

logger = logging.getLogger(__name__)

K = TypeVar("K", bound=Hashable)
V = TypeVar("V")

# INCR, but a missing key first gets the random start in ARGV[1] (see the module docstring).
_BUMP = """
if redis.call('EXISTS', KEYS[1]) == 0 then redis.call('SET', KEYS[1], ARGV[1]) end
return redis.call('INCR', KEYS[1])
"""


def _random_start() -> int:
    return secrets.randbits(62)


class VersionedCache(Generic[K, V]):
    """Values loaded from the database, kept while `version_key` in shared state does not change."""

    def __init__(self, version_key: str, *, ttl_seconds: float, max_entries: int) -> None:
        self.version_key = version_key
        self.ttl_seconds = ttl_seconds
        self.max_entries = max_entries  # past it the cache starts over: a bound, not an LRU
        self._entries: dict[K, tuple[int, float, V]] = {}
        self._lock = threading.Lock()

    def _current_version(self) -> int | None:
        try:
            client = state_redis()
            raw = client.get(self.version_key)
            if raw is None:
                client.set(self.version_key, _random_start(), nx=True)
                raw = client.get(self.version_key)
            return int(raw or 0)
        except STATE_ERRORS:
            return None

    def get(self, key: K, load: Callable[[], V], *, keep: Callable[[V], bool] | None = None) -> V:
        """The value of `key`, loaded again only when something changed since it was cached.

        `keep` decides which loaded values are cached (e.g. not the misses of random keys).
        """
        return self.get_at(key, load, version=self._current_version(), keep=keep)

    def get_at(
        self, key: K, load: Callable[[], V], *, version: int | None, keep: Callable[[V], bool] | None = None
    ) -> V:
        """`get` with the current version already read by the caller (None: the shared state is
        unreachable, so the value is loaded and not cached)."""
        if version is None:
            return load()
        now = time.monotonic()
        hit = self._entries.get(key)
        if hit is not None and hit[0] == version and now - hit[1] < self.ttl_seconds:
            return hit[2]
        value = load()  # read after the version: a change committed meanwhile bumps it again
        if keep is None or keep(value):
            with self._lock:
                if len(self._entries) >= self.max_entries:
                    self._entries.clear()
                self._entries[key] = (version, now, value)
        return value

    def peek(self, key: K) -> tuple[int, V] | None:
        """The cached value of `key` and the version it was read under, without asking Redis: the
        caller reads the current version in a round trip it makes anyway, then confirms the value
        with `get_at` (the API's rate-limit script, events/middleware.py; the fraud script,
        fraud/services.py)."""
        hit = self._entries.get(key)
        if hit is None or time.monotonic() - hit[1] >= self.ttl_seconds:
            return None
        return hit[0], hit[2]

    def changed(self) -> None:
        """Call after any change to what is cached: every process drops its entries.

        Bumped at once (so this very transaction's later reads see the change) and again after the
        commit: between the two, another process may read and cache the old committed state, and the
        second bump drops that.
        """
        self._bump()
        transaction.on_commit(self._bump)

    def _bump(self) -> None:
        try:
            state_redis().eval(_BUMP, 1, self.version_key, _random_start())
        except STATE_ERRORS:
            self._entries.clear()  # this process at least reads the change at once
            logger.warning(
                "could not bump %s: cached reads in other processes may lag up to %s s",
                self.version_key,
                self.ttl_seconds,
            )
