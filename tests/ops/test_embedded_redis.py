"""The embedded server: a maintained Valkey that nobody can use without the password."""

from __future__ import annotations

import stat

import psutil
import pytest
import redis
from django.conf import settings
from redis.backoff import NoBackoff
from redis.retry import Retry

from tests.conftest import EmbeddedRedis

pytestmark = [pytest.mark.core]


def test_it_refuses_a_client_without_the_password(embedded_redis_server: EmbeddedRedis) -> None:
    # No retries: redis-py counts AuthenticationError as a connection error and by default retries
    # it ten times with backoff (about 7 s here) before giving the same answer.
    once = Retry(NoBackoff(), 0)
    with pytest.raises(redis.AuthenticationError):
        redis.Redis(host="127.0.0.1", port=settings.EMBEDDED_REDIS_PORT, retry=once).ping()
    with pytest.raises(redis.AuthenticationError):
        redis.Redis(host="127.0.0.1", port=settings.EMBEDDED_REDIS_PORT, password="guess", retry=once).ping()
    assert redis.Redis.from_url(settings.EMBEDDED_REDIS_URL).ping()


def test_it_keeps_the_password_off_the_command_line(embedded_redis_server: EmbeddedRedis) -> None:
    assert embedded_redis_server.process is not None
    cmdline = " ".join(psutil.Process(embedded_redis_server.process.pid).cmdline())
    assert settings.EMBEDDED_REDIS_PASSWORD not in cmdline
    config = settings.STATE_DIR / "redis" / "server.conf"
    assert stat.S_IMODE(config.stat().st_mode) == 0o600
    assert stat.S_IMODE((settings.STATE_DIR / "redis_password").stat().st_mode) == 0o600


def test_it_runs_a_valkey_with_the_lua_fixes_of_2025(embedded_redis_server: EmbeddedRedis) -> None:
    info = redis.Redis.from_url(settings.EMBEDDED_REDIS_URL).info("server")
    # Valkey 8.1.4 is the first release with the fix for CVE-2025-49844 (and the other Lua fixes).
    version = tuple(int(part) for part in str(info["valkey_version"]).split("."))
    assert version >= (8, 1, 4)
