"""Shared fixtures: real services (or a visible skip; under CI=true a failure), actors, live processes."""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypedDict
from urllib.parse import urlsplit

import pytest
import redis
from django.conf import settings

from ops.embedded_redis import start_embedded_redis

ROOT = Path(__file__).resolve().parent.parent
IN_CI = os.environ.get("CI", "").lower() in {"1", "true", "yes"}

# Fixture modules shared by several test packages.
pytest_plugins = ["tests.cosmos_fixtures"]


def run_python(code: str, *args: str, env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    """`code` in a fresh interpreter at the repository root: for what only happens at import time
    (settings read from `env`, hooks run once per process)."""
    return subprocess.run(
        [sys.executable, "-c", code, *args],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )


def service_is_listening(host: str, port: int, timeout: float = 0.5) -> bool:
    try:
        with socket.create_connection((host, port), timeout=timeout):
            return True
    except OSError:
        return False


def require_service(name: str, url: str) -> None:
    """Skip with a visible reason when a service is absent; under CI=true that is a failure."""
    parts = urlsplit(url)
    host, port = parts.hostname or "127.0.0.1", parts.port or 0
    if service_is_listening(host, port):
        return
    message = f"{name} is not running at {host}:{port}"
    if IN_CI:
        pytest.fail(f"{message} (CI=true: a missing service is a failure)", pytrace=False)
    pytest.skip(message)


def pytest_report_header(config: pytest.Config) -> str:
    return (
        f"cloudscale: database={settings.DATABASES['default']['ENGINE'].rsplit('.', 1)[-1]} "
        f"broker={settings.BROKER_SCHEME} ({settings.BROKER_URL.split('@')[-1]}) "
        f"event_store={settings.EVENT_STORE} queue={settings.QUEUE_NAME}"
    )


# The fault suite's per-scenario counts travel in test reports under this name (tests/faults/), so
# that the summary is whole when pytest-xdist runs the scenarios in worker processes: only the
# controller prints it, and these hooks live here because the controller loads no deeper conftest.
FAULT_SUMMARY_PROPERTY = "fault_summary"
_fault_summary: list[str] = []


def pytest_runtest_logreport(report: pytest.TestReport) -> None:
    if report.when == "teardown":
        _fault_summary.extend(
            str(value) for name, value in report.user_properties if name == FAULT_SUMMARY_PROPERTY
        )


def pytest_terminal_summary(terminalreporter: pytest.TerminalReporter) -> None:
    if _fault_summary:
        terminalreporter.section("fault suite")
        for line in _fault_summary:
            terminalreporter.write_line(line)


def pytest_unconfigure(config: pytest.Config) -> None:
    """Remove the run's state folder, in each pytest-xdist worker and in the controller, which has
    one too (tests/settings.py)."""
    if settings.configured and settings.STATE_DIR.name.startswith("cloudscale-test-"):
        shutil.rmtree(settings.STATE_DIR, ignore_errors=True)


class EmbeddedRedis:
    """The test run's embedded Redis server; tests may stop and restart it (same port, same data)."""

    def __init__(self) -> None:
        self.url = settings.EMBEDDED_REDIS_URL  # with the run's password
        self.process: subprocess.Popen[bytes] | None = None
        # A test may ask for `always` (a 202 means on disk) where the run's default trades it for speed.
        self.fsync = settings.EMBEDDED_REDIS_FSYNC

    def start(self) -> None:
        self.process = start_embedded_redis(
            port=settings.EMBEDDED_REDIS_PORT,
            data_dir=settings.STATE_DIR / "redis",
            password=settings.EMBEDDED_REDIS_PASSWORD,
            fsync=self.fsync,
        )

    def stop(self, sig: int = signal.SIGTERM) -> None:
        if self.process is not None and self.process.poll() is None:
            self.process.send_signal(sig)
            self.process.wait(timeout=10)


@pytest.fixture(scope="session")
def embedded_redis_server() -> Iterator[EmbeddedRedis]:
    server = EmbeddedRedis()
    server.start()
    yield server
    server.stop()  # its data goes with the run's state folder (pytest_unconfigure)


@pytest.fixture(scope="session", autouse=True)
def embedded_redis(embedded_redis_server: EmbeddedRedis) -> str:
    """The embedded Redis server, started once per run; it always holds the shared state."""
    return embedded_redis_server.url


@pytest.fixture(scope="session", autouse=True)
def _variant_services(embedded_redis: str, django_db_blocker: object) -> None:
    """The database and broker of this variant must be reachable, or the whole run says why not."""
    if settings.DATABASES["default"]["ENGINE"].endswith("postgresql"):
        require_service("PostgreSQL", "postgres://127.0.0.1:5432")
    if settings.BROKER_SCHEME in {"amqp", "pyamqp"}:
        require_service("RabbitMQ", settings.BROKER_URL)
    elif not settings.BROKER_URL.startswith(settings.EMBEDDED_REDIS_URL):
        require_service("Redis", settings.BROKER_URL)


@pytest.fixture
def state_redis() -> redis.Redis:
    return redis.Redis.from_url(settings.REDIS_URL)


@pytest.fixture
def shared_state_down(settings: Any) -> Iterator[str]:
    """The shared-state Redis is unreachable: nothing listens at the address it is configured at."""
    from cloudscale_project.state import state_redis
    from tests.netutil import free_port

    settings.REDIS_URL = f"redis://127.0.0.1:{free_port()}/1"
    state_redis.cache_clear()
    yield settings.REDIS_URL
    state_redis.cache_clear()


@pytest.fixture(autouse=True)
def _clean_shared_state(embedded_redis: str) -> Iterator[None]:
    """Every test starts with empty shared state and an empty ingestion queue."""
    redis.Redis.from_url(settings.REDIS_URL).flushdb()
    purge_queue()
    yield


def purge_queue() -> None:
    """Empty the ingestion queue; on a Redis broker also forget the unacked messages an earlier
    test's killed or stopped worker left: a later test's worker would restore them after the
    visibility timeout and store events that test never sent."""
    from cloudscale_project.celery import app

    with app.connection_for_write() as conn, contextlib.suppress(*conn.channel_errors):
        # The queue may not exist yet. kombu-stubs types default_channel as the bare StdChannel.
        channel: Any = conn.default_channel
        channel.queue_purge(settings.QUEUE_NAME)
        if settings.BROKER_SCHEME == "redis":
            channel.client.delete(channel.unacked_key, channel.unacked_index_key)


# --- named actors ------------------------------------------------------------------------------


class AuthHeaders(TypedDict):
    """Test-client keyword arguments that authenticate (a TypedDict, so `**actor.headers` type-checks
    against `Client.get`/`post`, whose other parameters are not strings)."""

    HTTP_AUTHORIZATION: str


@dataclass(frozen=True)
class Actor:
    slug: str
    key: str

    @property
    def headers(self) -> AuthHeaders:
        return {"HTTP_AUTHORIZATION": f"Bearer {self.key}"}


@pytest.fixture
def acme(db: None) -> Actor:
    from tenants.services import tenant_create

    return Actor("acme", tenant_create(slug="acme", name="Acme Corp").key)


@pytest.fixture
def globex(db: None) -> Actor:
    from tenants.services import tenant_create

    return Actor("globex", tenant_create(slug="globex", name="Globex").key)


# --- live processes -------------------------------------------------------------------------------


def child_env(**extra: str) -> dict[str, str]:
    """The environment of a process started by a test: this run's settings, plus the test database."""
    from django.db import connection

    env = dict(os.environ)
    db = connection.settings_dict
    if db["ENGINE"].endswith("sqlite3"):
        env["DATABASE_URL"] = f"sqlite:///{db['NAME']}"
    else:
        user = db.get("USER") or "postgres"
        env["DATABASE_URL"] = (
            f"postgres://{user}@{db.get('HOST') or '127.0.0.1'}:{db.get('PORT') or 5432}/{db['NAME']}"
        )
    env["PYTHONUNBUFFERED"] = "1"
    env.update(extra)
    return env


@dataclass
class LiveProcess:
    process: subprocess.Popen[bytes]
    log_path: Path

    def stop(self, sig: int = signal.SIGTERM, timeout: float = 20) -> None:
        if self.process.poll() is None:
            try:
                os.killpg(self.process.pid, sig)
            except ProcessLookupError:
                return
            try:
                self.process.wait(timeout=timeout)
            except subprocess.TimeoutExpired:
                os.killpg(self.process.pid, signal.SIGKILL)
                self.process.wait(timeout=10)

    def log(self) -> str:
        return self.log_path.read_text(errors="replace") if self.log_path.exists() else ""


def start_worker(tmp_path: Path, *, name: str = "w1", concurrency: int = 2, extra_args: tuple[str, ...] = (),
                 env: dict[str, str] | None = None) -> LiveProcess:  # fmt: skip
    log_path = tmp_path / f"worker-{name}.log"
    argv = [
        sys.executable, "-m", "celery", "-A", "cloudscale_project", "worker",
        "-Q", settings.QUEUE_NAME, "-n", f"{name}@%h", "-c", str(concurrency),
        "--without-mingle", "--without-gossip", "--loglevel", "INFO", *extra_args,
    ]  # fmt: skip
    with log_path.open("wb") as log:
        process = subprocess.Popen(
            argv,
            cwd=ROOT,
            env=env or child_env(),
            stdout=log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
    live = LiveProcess(process, log_path)
    deadline = time.monotonic() + 60
    while " ready." not in live.log():
        if process.poll() is not None or time.monotonic() > deadline:
            live.stop()
            raise RuntimeError(f"worker did not start:\n{live.log()[-3000:]}")
        time.sleep(0.2)
    return live


@pytest.fixture
def live_worker(transactional_db: None, tmp_path: Path) -> Iterator[LiveProcess]:
    worker = start_worker(tmp_path)
    yield worker
    worker.stop()


# Callable[..., object]: it is called with no arguments, but mypy cannot match `lambda port=port: ...`
# (a loop variable bound as a default) to Callable[[], object].
def wait_until(
    predicate: Callable[..., object], *, timeout: float = 30.0, interval: float = 0.2, message: str = ""
) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout}s waiting for {message or predicate}")
        time.sleep(interval)


@pytest.fixture
def version_reads(monkeypatch: pytest.MonkeyPatch) -> list[str]:
    """The version keys of the per-process caches read with a GET of their own, in order (a
    version checked inside another script, the rate limiter's or the fraud windows', is not one)."""
    from cloudscale_project.versioned_cache import VersionedCache

    reads: list[str] = []
    real = VersionedCache._current_version

    def counted(self: VersionedCache[object, object]) -> int | None:
        reads.append(self.version_key)
        return real(self)

    monkeypatch.setattr(VersionedCache, "_current_version", counted)
    return reads
