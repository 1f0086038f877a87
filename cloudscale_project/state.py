"""The shared-state Redis (`CLOUDSCALE_REDIS_URL`): one client per process for every module that uses it.

Rate limits, dedup reservations, the ledger's API counts and the platform metrics all live there.
"""

from __future__ import annotations

from functools import cache

import redis
from django.conf import settings

# What a call to the shared state can raise when the server is away. redis-py may also raise
# ValueError ("I/O operation on closed file") when a connection is closed under a request.
STATE_ERRORS: tuple[type[Exception], ...] = (redis.RedisError, OSError, ValueError)


@cache
def state_redis() -> redis.Redis:
    return redis.Redis.from_url(settings.REDIS_URL, socket_timeout=2, socket_connect_timeout=2)
