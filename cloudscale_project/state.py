"""The shared-state Redis (`CLOUDSCALE_REDIS_URL`): one client per process for every module that uses it.

Rate limits, dedup reservations, the ledger's API counts, the platform metrics and the fraud windows
all live there.
"""

from __future__ import annotations

from functools import cache

import redis
from django.conf import settings

# What a call to the shared state can raise when the server is away. redis-py may also raise
# ValueError ("I/O operation on closed file") when a connection is closed under a request.
STATE_ERRORS: tuple[type[Exception], ...] = (redis.RedisError, OSError, ValueError)

# A request-path call (rate limit, dedup) must fail fast so the API can answer 503.
DEFAULT_TIMEOUT_SECONDS = 2.0


@cache
def state_redis(*, socket_timeout: float = DEFAULT_TIMEOUT_SECONDS) -> redis.Redis:
    """The client for this timeout (one per distinct timeout and process; most callers use the default)."""
    return redis.Redis.from_url(settings.REDIS_URL, socket_timeout=socket_timeout, socket_connect_timeout=2)
