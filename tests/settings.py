"""Settings of a test run: the test environment is set, then the one settings module is read.

pytest-django points DJANGO_SETTINGS_MODULE here; processes the tests start inherit the environment.

The suite runs against real services. The variant is chosen by environment, so the same tests run
on every backend (see tests/README.md and `make test`):

  CLOUDSCALE_TEST_DATABASE = sqlite (default) | postgresql
  CLOUDSCALE_TEST_BROKER   = embedded (default) | rabbitmq | redis

The embedded Redis server gets a free port and a temporary state folder of its own, so a test run
never touches `make run`'s data. Under pytest-xdist each worker process is a test run of its own in
this sense: it configures afresh (its state folder, Redis port, queue names and PostgreSQL test
database), while the processes a test starts inherit their worker's choices.
"""

from __future__ import annotations

import os
import tempfile

from tests.netutil import free_port


def _configure_test_environment() -> None:
    # pytest-xdist names each worker (gw0, gw1…) in PYTEST_XDIST_WORKER; the controller has none.
    run = os.environ.get("PYTEST_XDIST_WORKER", "main")
    if os.environ.get("CLOUDSCALE_TEST_CONFIGURED") == run:
        return  # a child process of the test run inherits the parent's choices
    state_dir = tempfile.mkdtemp(prefix=f"cloudscale-test-{run}-")
    os.environ["CLOUDSCALE_TEST_CONFIGURED"] = run
    os.environ["CLOUDSCALE_STATE_DIR"] = state_dir
    os.environ["CLOUDSCALE_EMBEDDED_REDIS_PORT"] = str(free_port())
    os.environ["CLOUDSCALE_EMBEDDED_REDIS_FSYNC"] = "everysec"
    os.environ.setdefault("DJANGO_SECRET_KEY", "test-secret-key-not-for-production")
    os.environ["CLOUDSCALE_ENV"] = "local"
    os.environ["PROMETHEUS_MULTIPROC_DIR"] = os.path.join(state_dir, "prometheus")
    os.makedirs(os.environ["PROMETHEUS_MULTIPROC_DIR"], exist_ok=True)
    # Tests send bursts from one address: lift the limits unless a test sets its own.
    os.environ.setdefault("CLOUDSCALE_RATE_LIMIT_PER_IP_CAPACITY", "1000000")
    os.environ.setdefault("CLOUDSCALE_RATE_LIMIT_GLOBAL_PER_MINUTE", "10000000")
    os.environ.setdefault("CLOUDSCALE_RATE_LIMIT_ANONYMOUS_PER_MINUTE", "10000000")
    os.environ.setdefault("CLOUDSCALE_RATE_LIMIT_TENANT_READS_PER_SECOND", "1000000")
    os.environ.setdefault("CLOUDSCALE_RATE_LIMIT_TENANT_READ_BURST", "1000000")
    # Test receivers of webhooks listen on loopback, which production refuses.
    os.environ.setdefault("CLOUDSCALE_WEBHOOK_ALLOW_PRIVATE", "true")

    database = os.environ.get("CLOUDSCALE_TEST_DATABASE", "sqlite")
    if database == "postgresql":
        os.environ["DATABASE_URL"] = os.environ.get(
            "CLOUDSCALE_TEST_POSTGRES_URL", "postgres://postgres@127.0.0.1:5432/cloudscale"
        )
    elif database != "sqlite":
        raise SystemExit(f"CLOUDSCALE_TEST_DATABASE={database!r}: use sqlite or postgresql")

    broker = os.environ.get("CLOUDSCALE_TEST_BROKER", "embedded")
    if broker == "rabbitmq":
        os.environ["CLOUDSCALE_BROKER_URL"] = os.environ.get(
            "CLOUDSCALE_TEST_RABBITMQ_URL", "amqp://guest:guest@127.0.0.1:5672//"
        )
    elif broker == "redis":
        os.environ["CLOUDSCALE_BROKER_URL"] = os.environ.get(
            "CLOUDSCALE_TEST_REDIS_URL", "redis://127.0.0.1:6379/15"
        )
    elif broker != "embedded":
        raise SystemExit(f"CLOUDSCALE_TEST_BROKER={broker!r}: use embedded, rabbitmq or redis")
    # Each test run gets a queue of its own, so a shared RabbitMQ/Redis never mixes two runs.
    os.environ["CLOUDSCALE_QUEUE"] = f"events-ingestion-test-{os.getpid()}"
    os.environ["CLOUDSCALE_OPS_QUEUE"] = f"cloudscale-ops-test-{os.getpid()}"


_configure_test_environment()

from cloudscale_project.settings import *  # noqa: E402, F403
from cloudscale_project.settings import BROKER_URL, DATABASES, EMBEDDED_REDIS_URL  # noqa: E402

# What tells this run's names apart on a server that several runs share: its queue's suffix.
_RUN_ID = os.environ["CLOUDSCALE_QUEUE"].rsplit("-", 1)[-1]

if DATABASES["default"]["ENGINE"].endswith("postgresql"):
    # Several test runs may share one PostgreSQL server: each gets its own test database.
    DATABASES["default"]["TEST"] = {"NAME": f"test_cloudscale_{_RUN_ID}"}

# Django's own advice for test speed: the default hasher (PBKDF2, a million iterations) costs about
# 0.2 s per user created or login checked, and the admin tests create one each. No test is about
# password hashing; processes the tests start read this module too, so they agree on the hasher.
PASSWORD_HASHERS = ["django.contrib.auth.hashers.MD5PasswordHasher"]

if not BROKER_URL.startswith(EMBEDDED_REDIS_URL):
    # A broker that several runs may share (RabbitMQ, Redis, any CLOUDSCALE_BROKER_URL): remote control and monitoring get exchanges
    # of this run's own. Otherwise a worker named `w1@host` in two runs would declare the same
    # exclusive `w1@host.celery.pidbox` queue (RabbitMQ refuses the second: RESOURCE_LOCKED), and an
    # autoscale broadcast of one run would reach the other's workers.
    CELERY_CONTROL_EXCHANGE = f"cloudscale-test-{_RUN_ID}"
    CELERY_EVENT_EXCHANGE = f"cloudscale-test-{_RUN_ID}-ev"
