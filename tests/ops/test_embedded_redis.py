"""The embedded server: a maintained Valkey that nobody can use without the password."""

from __future__ import annotations

import stat
import subprocess
import sys
from pathlib import Path

import psutil
import pytest
import redis
from django.conf import settings
from redis.backoff import NoBackoff
from redis.retry import Retry

from tests.conftest import ROOT, EmbeddedRedis, child_env

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


def _fsync_default(tmp_path: Path, **env: str) -> str:
    """The embedded server's appendfsync as a process with `env` (and no fsync setting) reads it."""
    environment = {k: v for k, v in child_env().items() if not k.startswith("CLOUDSCALE_")}
    environment.update(
        CLOUDSCALE_STATE_DIR=str(tmp_path), DJANGO_SETTINGS_MODULE="cloudscale_project.settings"
    )
    environment.update(env)
    probe = "from django.conf import settings; print(settings.EMBEDDED_REDIS_FSYNC)"
    done = subprocess.run(
        [sys.executable, "-c", probe], cwd=ROOT, env=environment, capture_output=True, text=True, check=True
    )
    return done.stdout.strip()


@pytest.mark.parametrize(
    ("env", "expected"),
    [
        ({}, "always"),  # the broker: a 202 means on disk
        ({"CLOUDSCALE_BROKER_URL": "amqp://guest:guest@127.0.0.1:5672//"}, "everysec"),  # state only
        (
            {"CLOUDSCALE_BROKER_URL": "amqp://x@127.0.0.1//", "CLOUDSCALE_EMBEDDED_REDIS_FSYNC": "always"},
            "always",
        ),
        ({"CLOUDSCALE_EMBEDDED_REDIS_FSYNC": "everysec"}, "everysec"),
    ],
)
def test_it_syncs_every_write_only_where_it_is_the_broker(
    tmp_path: Path, env: dict[str, str], expected: str
) -> None:
    assert _fsync_default(tmp_path, **env) == expected
