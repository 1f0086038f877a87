"""Every Redis client of ours parses replies with hiredis (a declared dependency, `redis[hiredis]`).

redis-py falls back to its pure-Python parser, silently, when hiredis cannot be imported; each Redis
call then costs the calling process a fifth to a third more CPU (docs/benchmarks.md, "Levers, ninth
round"). These tests make that fallback visible.
"""

from __future__ import annotations

import pytest
import redis
from django.conf import settings
from redis._parsers import _HiredisParser

from cloudscale_project.celery import app
from cloudscale_project.state import state_redis

pytestmark = [pytest.mark.core]


def _parser_of(client: redis.Redis) -> object:
    """The reply parser of a connection from `client`'s pool (after a PING: connected for real)."""
    assert client.ping()
    pool = client.connection_pool
    connection = pool.get_connection()
    try:
        return connection._parser
    finally:
        pool.release(connection)


def test_the_shared_state_client_parses_replies_with_hiredis() -> None:
    assert isinstance(_parser_of(state_redis()), _HiredisParser)


def test_the_redis_broker_client_parses_replies_with_hiredis() -> None:
    if settings.BROKER_SCHEME != "redis":
        pytest.skip("the Redis transport is only used with a redis:// broker")
    with app.connection_for_write() as conn:
        client = conn.default_channel.client  # type: ignore[attr-defined]
        assert isinstance(_parser_of(client), _HiredisParser)
