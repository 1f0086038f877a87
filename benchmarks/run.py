"""`make bench`: the platform's numbers from one run on this machine (docs/benchmarks.md).

Starts the embedded stack itself (`manage.py runplatform` with its own temporary state folder and
free ports, no Flower, no beat, task events off), then measures, one after the other:

1. batched end-to-end throughput: synthetic traffic (benchmarks/loadgen.py) in batches through
   `POST /api/events/batch` from several clients, from the first POST until every accepted event
   is in the event store (counted through the ORM on the same SQLite file);
1b. the same traffic through the SDK-compatible `POST /v1/batch` (Segment format, gzip): its
   server CPU per event beside the batched run's;
2. the naive baseline: the same kind of events published straight to the broker, one Celery task
   per event (benchmarks/naive_tasks.py: the same pipeline steps, one event at a time, a one-row
   store write each), until every one is stored; and the ratio of the two;
3. latency of single-event `POST /api/events` under many concurrent clients, beside a trivial
   Django view on the same gunicorn (benchmarks/views.py: the floor);
4. the same two at a steady rate (open loop: requests leave on a fixed schedule whether or not
   earlier ones were answered, and latency counts from the scheduled time);
5. the batched run again with every event from one client address (one hot fraud subject), on a
   tenant of its own (fresh windows and scores, as the batched run has);
6. peak memory of the API (gunicorn) and worker (Celery) process trees, sampled throughout;

Prints a table, then a profile section, and as its last line
`RESULT e2e_events_per_s=<n> ratio_vs_naive=<x> p99_ms=<y> cpu_s_per_1k=<c> single_vs_floor=<r>
open_p99_ms=<o> hot_ratio=<h>` (one line): cpu_s_per_1k = CPU seconds of all processes per 1,000
batched events; single_vs_floor = single-event requests/s over the trivial view's, same clients;
open_p99_ms = single-event p99 at the open-loop rate; hot_ratio = batched rate with one address per
session over the rate with every event from one address.

`CLOUDSCALE_BENCH_STACK=postgres` (`make bench STACK=postgres`) runs the same on the machine's
PostgreSQL (127.0.0.1:5432, a database created for the run and dropped after it) and RabbitMQ
(127.0.0.1:5672, queues named for the run and deleted after it), with two worker processes; shared
state stays on the embedded Redis.

Sizes and tuning come from the environment (defaults in brackets):
  CLOUDSCALE_BENCH_EVENTS [50000]          events of the batched run
  CLOUDSCALE_BENCH_BATCH [500]             events per batch request
  CLOUDSCALE_BENCH_CLIENTS [4]             concurrent clients of the batched run
  CLOUDSCALE_BENCH_NAIVE_EVENTS [5000]     events of the naive run
  CLOUDSCALE_BENCH_LATENCY_CLIENTS [50]    concurrent clients of the latency runs
  CLOUDSCALE_BENCH_LATENCY_REQUESTS [3000] requests per latency run (API and floor each)
  CLOUDSCALE_BENCH_LATENCY_ROUNDS [3]      latency runs of each side, floor and API alternating (each side
                                           first in every other round); the figures pool the rounds
  CLOUDSCALE_BENCH_API_WORKERS [2]         gunicorn worker processes (threads: GUNICORN_THREADS, 8)
  CLOUDSCALE_BENCH_AUTOSCALE [unset]       the worker's --autoscale max,min (unset: `make run`'s default;
                                           postgres stack: 2,2)
  CLOUDSCALE_BENCH_OPEN_RATE [200]         requests/s of the open-loop latency runs
  CLOUDSCALE_BENCH_OPEN_REQUESTS [2000]    requests per open-loop run (API and floor each)
  CLOUDSCALE_BENCH_HOT_EVENTS [events]     events of the one-address batched run
  CLOUDSCALE_BENCH_PREFILL_EVENTS [0]      events stored, unmeasured, for each batched run's tenant before
                                           the warm-up (the task body's database steps, no fraud windows):
                                           tables as old as a deployment's (docs/benchmarks.md)
  CLOUDSCALE_BENCH_STACK [embedded]        embedded (SQLite + Redis) or postgres (PostgreSQL + RabbitMQ)
  CLOUDSCALE_BENCH_ONE_ADDRESS [unset]     1: every event from the bench's own address (no X-Forwarded-For)
  CLOUDSCALE_BENCH_PROFILE [unset]         a folder: py-spy records API and worker during the batched run
  CLOUDSCALE_BENCH_PROFILE_RATE [100]      py-spy's samples per second (997 for a short run's detail)
  CLOUDSCALE_BENCH_TIMEOUT [240]           seconds a run may take to drain before the bench fails
  CLOUDSCALE_BENCH_MAKE_RUN_EVENTS [30000] events of each run of run 7 (0: skip it)
  CLOUDSCALE_BENCH_MAKE_RUN_ROUNDS [2]     rounds of run 7, each a run of `make run`'s configuration and
                                           one of the bench's, the order swapped every round
  CLOUDSCALE_BENCH_PHASES [all]            a comma-separated subset of batched,sdk,hot,naive,latency,open
                                           (no RESULT line unless all run; FIGURES always)
  CLOUDSCALE_BENCH_AS_USERS [unset]        1: start the platform as `make run` does (beat, Flower, task
                                           events, the default pool) instead of the bench's tuning
  CLOUDSCALE_BENCH_TREE [this checkout]    run the platform from another checkout (A/B of code levers:
                                           benchmarks/ab.py)
  CLOUDSCALE_BENCH_PLATFORM_ENV [unset]    KEY=VALUE,... set in the platform's environment (A/B of settings)
  CLOUDSCALE_BENCH_KEEP_STATE [unset]      1: keep the platform's state folder (its logs: logs/worker.log,
                                           logs/api.log) and, on the postgres stack, its database; the
                                           bench prints where. Not run 7's platforms. A failed run
                                           always keeps them

7. the platform as `make run` starts it (beat, Flower, task events, the default pool; same stack),
   after the first has stopped: batched traffic on platforms of their own, `make run`'s and the
   bench's configuration alternating (bench, make run, make run, bench for two rounds), so their
   CPU per event is compared side by side, not with run 1's minutes earlier.

Besides the RESULT line it prints `FIGURES {json}`: every figure of the run, for benchmarks/ab.py.
"""

from __future__ import annotations

import argparse
import contextlib
import gc
import math
import os
import platform
import secrets
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import urllib.error
import urllib.request
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field, replace
from functools import cached_property
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

# Only once ROOT is on sys.path (this file runs as a script).
from cloudscale_project.env import env_int  # noqa: E402
from tests.netutil import free_port  # noqa: E402

# The environment the bench was started with (its CLOUDSCALE_BENCH_* knobs included): this process
# later takes the platform's environment to talk to its database and broker (_setup_django).
_CALLER_ENV = dict(os.environ)

TENANT = "demo"
SDK_TENANT = "demo-sdk"
HOT_TENANT = "demo-hot"
# The runs' own tenants (the batched run's is the demo tenant), by the name each is created under.
RUN_TENANT_NAMES = {SDK_TENANT: "SDK benchmark", HOT_TENANT: "one-address benchmark"}
READY_TIMEOUT_SECONDS = 120.0
POLL_SECONDS = 0.1
RSS_SAMPLE_SECONDS = 0.5
WARMUP_BATCHES = 4
WARMUP_NAIVE_EVENTS = 50
WARMUP_REQUESTS = 200
# The platform's per-IP and global request limits would turn a benchmark from one address into a
# 429 test; the limiter itself still runs on every request (its cost is measured).
# The load comes from many client addresses, as it does behind a load balancer: the bench trusts
# its own address as a proxy and the load generator names each session's address in
# X-Forwarded-For. (All traffic from one address makes that address a hot fraud-window subject:
# docs/benchmarks.md, "One hot address".)
TRUSTED_PROXY = "127.0.0.1/32"
# STACK=postgres: the machine's services on loopback (a database and queues of the run's own).
POSTGRES_URL = "postgres://postgres@127.0.0.1:5432"
RABBITMQ_URL = "amqp://guest:guest@127.0.0.1:5672//"
POSTGRES_WORKER_AUTOSCALE = "2,2"  # two worker processes
LIFTED_LIMITS = {
    "CLOUDSCALE_RATE_LIMIT_PER_IP_CAPACITY": "1000000000",
    "CLOUDSCALE_RATE_LIMIT_PER_IP_REFILL": "1000000000",
    "CLOUDSCALE_RATE_LIMIT_GLOBAL_PER_MINUTE": "1000000000",
}


PHASES = frozenset({"batched", "sdk", "hot", "naive", "latency", "open"})


def _phases(text: str) -> frozenset[str]:
    chosen = frozenset(part.strip() for part in text.split(",") if part.strip()) or PHASES
    unknown = chosen - PHASES
    if unknown:
        raise ValueError(f"CLOUDSCALE_BENCH_PHASES: unknown {sorted(unknown)}; known: {sorted(PHASES)}")
    return chosen


def _pairs(text: str) -> dict[str, str]:
    pairs = {}
    for part in filter(None, (p.strip() for p in text.split(","))):
        key, sep, value = part.partition("=")
        if not sep:
            raise ValueError(f"CLOUDSCALE_BENCH_PLATFORM_ENV: {part!r} is not KEY=VALUE")
        pairs[key.strip()] = value.strip()
    return pairs


@dataclass(frozen=True)
class BenchConfig:
    events: int = field(default_factory=lambda: env_int("CLOUDSCALE_BENCH_EVENTS", 50_000))
    batch: int = field(default_factory=lambda: env_int("CLOUDSCALE_BENCH_BATCH", 500))
    clients: int = field(default_factory=lambda: env_int("CLOUDSCALE_BENCH_CLIENTS", 4))
    naive_events: int = field(default_factory=lambda: env_int("CLOUDSCALE_BENCH_NAIVE_EVENTS", 5_000))
    latency_clients: int = field(default_factory=lambda: env_int("CLOUDSCALE_BENCH_LATENCY_CLIENTS", 50))
    latency_requests: int = field(default_factory=lambda: env_int("CLOUDSCALE_BENCH_LATENCY_REQUESTS", 3_000))
    latency_rounds: int = field(
        default_factory=lambda: env_int("CLOUDSCALE_BENCH_LATENCY_ROUNDS", 3, minimum=1)
    )
    api_workers: int = field(default_factory=lambda: env_int("CLOUDSCALE_BENCH_API_WORKERS", 2))
    autoscale: str = field(default_factory=lambda: os.environ.get("CLOUDSCALE_BENCH_AUTOSCALE", ""))
    open_rate: float = field(default_factory=lambda: float(env_int("CLOUDSCALE_BENCH_OPEN_RATE", 200)))
    open_requests: int = field(default_factory=lambda: env_int("CLOUDSCALE_BENCH_OPEN_REQUESTS", 2_000))
    hot_events: int = field(default_factory=lambda: env_int("CLOUDSCALE_BENCH_HOT_EVENTS", 0))
    prefill_events: int = field(default_factory=lambda: env_int("CLOUDSCALE_BENCH_PREFILL_EVENTS", 0))
    stack: str = field(default_factory=lambda: os.environ.get("CLOUDSCALE_BENCH_STACK", "") or "embedded")
    profile_dir: str = field(default_factory=lambda: os.environ.get("CLOUDSCALE_BENCH_PROFILE", ""))
    profile_rate: int = field(
        default_factory=lambda: env_int("CLOUDSCALE_BENCH_PROFILE_RATE", 100, minimum=1)
    )
    one_address: bool = field(default_factory=lambda: os.environ.get("CLOUDSCALE_BENCH_ONE_ADDRESS") == "1")
    timeout: float = field(default_factory=lambda: float(env_int("CLOUDSCALE_BENCH_TIMEOUT", 240)))
    make_run_events: int = field(default_factory=lambda: env_int("CLOUDSCALE_BENCH_MAKE_RUN_EVENTS", 30_000))
    make_run_rounds: int = field(
        default_factory=lambda: env_int("CLOUDSCALE_BENCH_MAKE_RUN_ROUNDS", 2, minimum=1)
    )
    phases: frozenset[str] = field(
        default_factory=lambda: _phases(os.environ.get("CLOUDSCALE_BENCH_PHASES", ""))
    )
    as_users: bool = field(default_factory=lambda: os.environ.get("CLOUDSCALE_BENCH_AS_USERS") == "1")
    tree: Path = field(
        default_factory=lambda: Path(os.environ.get("CLOUDSCALE_BENCH_TREE") or ROOT).resolve()
    )
    platform_env: dict[str, str] = field(
        default_factory=lambda: _pairs(os.environ.get("CLOUDSCALE_BENCH_PLATFORM_ENV", ""))
    )
    keep_state: bool = field(default_factory=lambda: os.environ.get("CLOUDSCALE_BENCH_KEEP_STATE") == "1")

    @property
    def complete(self) -> bool:
        return self.phases == PHASES


_ROLE_MARKERS = {
    "api": "gunicorn",
    "worker": " worker ",
    "redis": "valkey-server",
    "beat": " beat ",
    "flower": " flower ",
}
# Services of the postgres stack that are not our children, found by process name. They are the
# machine's, so their CPU includes whatever other users of the same servers did meanwhile.
_SERVICE_NAMES = {"postgres": ("postgres",), "rabbitmq": ("beam.smp", "erl_child_setup", "epmd")}


def _default_pool_bounds() -> tuple[int, int]:
    from ops.autoscale import default_pool_bounds

    return default_pool_bounds(cores=os.cpu_count() or 1)


def _status(url: str) -> int:
    try:
        with urllib.request.urlopen(url, timeout=2) as response:
            return int(response.status)
    except urllib.error.HTTPError as exc:
        return int(exc.code)
    except OSError:
        return 0


# --- the stack ------------------------------------------------------------------------------------------


class Platform:
    """`manage.py runplatform` in its own session, on a temporary state folder and free ports."""

    def __init__(self, config: BenchConfig) -> None:
        self.state = Path(tempfile.mkdtemp(prefix="cloudscale-bench-"))
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.env = {
            key: value
            for key, value in os.environ.items()
            if not key.startswith(
                (
                    "CLOUDSCALE_",
                    "DATABASE_URL",
                    "PROMETHEUS_",
                    "DJANGO_",
                    "COSMOS_",
                    "OTEL_",
                    "APPLICATIONINSIGHTS",
                )
            )
        }
        self.env.update(
            LIFTED_LIMITS,
            CLOUDSCALE_STATE_DIR=str(self.state),
            CLOUDSCALE_EMBEDDED_REDIS_PORT=str(free_port()),
            CLOUDSCALE_ADMIN_PASSWORD=secrets.token_urlsafe(12),
            CLOUDSCALE_TRUSTED_PROXIES=TRUSTED_PROXY,
            DJANGO_SETTINGS_MODULE="benchmarks.settings",  # the naive task and the floor view
            PYTHONUNBUFFERED="1",
        )
        self.as_users = config.as_users
        if not self.as_users:
            self.env["CLOUDSCALE_TASK_EVENTS"] = "false"  # no Flower in this run: events would only cost CPU
        self.env.update(config.platform_env)
        self.env_overrides = dict(config.platform_env)
        self.checkout = config.tree
        self.roles = ("api", "worker", "redis", *(("beat", "flower") if self.as_users else ()))
        self.stack = config.stack
        self.database = ""
        autoscale = config.autoscale
        if config.stack == "postgres":
            run = secrets.token_hex(4)
            self.database = f"cloudscale_bench_{run}"
            self.env.update(
                DATABASE_URL=f"{POSTGRES_URL}/{self.database}",
                CLOUDSCALE_BROKER_URL=RABBITMQ_URL,
                CLOUDSCALE_QUEUE=f"cloudscale-bench-{run}",
                CLOUDSCALE_OPS_QUEUE=f"cloudscale-bench-ops-{run}",
            )
            autoscale = autoscale or POSTGRES_WORKER_AUTOSCALE
        elif config.stack != "embedded":
            raise ValueError(f"CLOUDSCALE_BENCH_STACK must be embedded or postgres, not {config.stack!r}")
        self.argv = [
            sys.executable, "manage.py", "runplatform", "--port", str(self.port),
            "--flower-port", str(free_port()), "--api-workers", str(config.api_workers),
        ]  # fmt: skip
        if self.as_users:  # as `make run` starts it: beat, Flower and the default pool
            autoscale = ""
        else:
            self.argv += ["--no-flower", "--no-beat"]
        if autoscale:
            self.argv += ["--autoscale", autoscale]
        self.autoscale = autoscale or "{},{}".format(*_default_pool_bounds())
        self.process: subprocess.Popen[bytes] | None = None
        self._log = self.state / "runplatform.out"

    def describe(self) -> str:
        # The embedded server's default sync (cloudscale_project/settings.py): every write where it
        # is the broker, once a second where it holds only the shared state.
        fsync = self.env.get("CLOUDSCALE_EMBEDDED_REDIS_FSYNC") or (
            "everysec" if self.stack == "postgres" else "always"
        )
        if self.stack == "postgres":
            described = (
                "PostgreSQL 127.0.0.1:5432 + RabbitMQ 127.0.0.1:5672; "
                f"shared state: embedded Redis (appendfsync {fsync})"
            )
        else:
            described = f"embedded: SQLite + Redis (appendfsync {fsync})"
        if self.checkout != ROOT:
            described += f"; platform from {self.checkout}"
        if self.env_overrides:
            described += "; " + ", ".join(f"{k}={v}" for k, v in self.env_overrides.items())
        return described

    def _postgres(self, statement: str) -> None:
        import psycopg

        with psycopg.connect(f"{POSTGRES_URL}/postgres", autocommit=True) as conn:
            conn.execute(statement)

    def start(self) -> None:
        if self.database:
            self._postgres(f'CREATE DATABASE "{self.database}"')
        with self._log.open("wb") as log:
            self.process = subprocess.Popen(
                self.argv,
                cwd=self.checkout,
                env=self.env,
                stdout=log,
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )
        deadline = time.monotonic() + READY_TIMEOUT_SECONDS
        while _status(f"{self.url}/readyz") != 200 or not (self.state / "demo_api_key").exists():
            if self.process.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError(f"the platform did not become ready:\n{self.log()[-3000:]}")
            time.sleep(0.3)
        # Both process trees are up (gunicorn workers and the worker's pool answer only once forked).
        while not (self.tree("api") and self.tree("worker")):
            time.sleep(0.2)

    def log(self) -> str:
        return self._log.read_text(errors="replace") if self._log.exists() else ""

    @property
    def api_key(self) -> str:
        return (self.state / "demo_api_key").read_text().strip()

    def tree(self, role: str) -> list[Any]:
        """The processes of one role: 'api' (gunicorn), 'worker' (Celery worker and its pool), 'redis'."""
        import psutil

        if self.process is None:
            return []
        try:
            children = psutil.Process(self.process.pid).children()
        except psutil.NoSuchProcess:
            return []
        roots = []
        for child in children:
            with contextlib.suppress(psutil.Error):
                cmdline = " ".join(child.cmdline())
                if _ROLE_MARKERS[role] in cmdline:
                    roots.append(child)
        processes = []
        for root in roots:
            with contextlib.suppress(psutil.Error):
                processes += [root, *root.children(recursive=True)]
        return processes

    def stop(self, *, keep_state: bool = False) -> None:
        """What Ctrl-C does: the supervisor stops every process it started, broker last."""
        if self.process is not None and self.process.poll() is None:
            os.killpg(self.process.pid, signal.SIGINT)
            try:
                self.process.wait(timeout=60)
            except subprocess.TimeoutExpired:
                os.killpg(self.process.pid, signal.SIGKILL)
                self.process.wait(timeout=10)
        if self.stack == "postgres":
            self._drop_queues()
        if self.database and not keep_state:
            with contextlib.suppress(Exception):
                self._postgres(f'DROP DATABASE IF EXISTS "{self.database}" WITH (FORCE)')
        if keep_state:
            _step(
                f"logs and data kept in {self.state}"
                + (f" (database {self.database})" if self.database else "")
            )
        else:
            shutil.rmtree(self.state, ignore_errors=True)

    def _drop_queues(self) -> None:
        """The run's RabbitMQ queues go with it (the broker is shared with other users)."""
        from kombu import Connection, Queue

        with contextlib.suppress(Exception), Connection(RABBITMQ_URL, connect_timeout=3) as conn:
            channel = conn.channel()
            for name in (self.env["CLOUDSCALE_QUEUE"], self.env["CLOUDSCALE_OPS_QUEUE"]):
                with contextlib.suppress(Exception):
                    Queue(name).bind(channel).delete()

    def services(self, role: str) -> list[Any]:
        """The machine's processes of a service of the postgres stack ('postgres', 'rabbitmq')."""
        import psutil

        found = []
        for process in psutil.process_iter(["name"]):
            if (process.info["name"] or "").startswith(_SERVICE_NAMES[role]):
                found.append(process)
        return found


def _top_processes(tree: list[Any]) -> list[Any]:
    """The processes of a tree whose parent is not in it: for the worker, Celery's main
    process(es), which read, dispatch and ack every message, without their pool."""
    import psutil

    pids = {process.pid for process in tree}
    top = []
    for process in tree:
        with contextlib.suppress(psutil.Error):
            if process.ppid() not in pids:
                top.append(process)
    return top


class CpuMeter:
    """CPU seconds (user + system) spent by each role's processes and by this process (the load
    generator) while the block runs, and how busy the rest of the machine was meanwhile (the
    machine is shared: other processes' CPU is capacity this run did not have)."""

    SERVICES = ("postgres", "rabbitmq")

    def __init__(self, stack: Platform) -> None:
        self._stack = stack
        self.roles = stack.roles
        self.services = self.SERVICES if stack.stack == "postgres" else ()
        self.ours = (*self.roles, *self.services, "client")
        self.seconds: dict[str, float] = {}
        self.worker_main_seconds = 0.0
        self.others_cores = 0.0  # average CPU cores used by processes outside this run
        self.wall = 0.0  # seconds the block ran
        self._start: dict[str, float] = {}
        self._service_start: dict[int, float] = {}

    def _services_now(self) -> dict[int, tuple[str, float]]:
        """CPU seconds so far of each service process, by pid: processes come and go (a PostgreSQL
        backend per connection), so the run's share is summed per process, never negative."""
        import psutil

        found = {}
        for service in self.services:
            for process in self._stack.services(service):
                with contextlib.suppress(psutil.Error):
                    times = process.cpu_times()
                    found[process.pid] = (service, times.user + times.system)
        return found

    def _now(self) -> dict[str, float]:
        import psutil

        totals = {}
        totals["worker_main"] = 0.0
        for role in self.roles:
            tree = self._stack.tree(role)
            seconds: dict[int, float] = {}
            for process in tree:
                with contextlib.suppress(psutil.Error):
                    times = process.cpu_times()
                    seconds[process.pid] = times.user + times.system
            totals[role] = sum(seconds.values())
            if role == "worker":
                totals["worker_main"] = sum(seconds.get(process.pid, 0.0) for process in _top_processes(tree))
        own = psutil.Process().cpu_times()
        totals["client"] = own.user + own.system
        machine = psutil.cpu_times()
        # Linux counts guest time inside user time already; steal is capacity the hypervisor gave away.
        not_busy = ("idle", "iowait", "guest", "guest_nice")
        totals["machine_busy"] = sum(machine) - sum(getattr(machine, name, 0.0) for name in not_busy)
        totals["wall"] = time.monotonic()
        return totals

    def __enter__(self) -> CpuMeter:
        self._service_start = {pid: seconds for pid, (_, seconds) in self._services_now().items()}
        self._start = self._now()
        return self

    def __exit__(self, *exc: object) -> None:
        end = self._now()
        delta = {key: end[key] - self._start[key] for key in end}
        for service in self.services:
            delta[service] = 0.0
        for pid, (service, seconds) in self._services_now().items():
            delta[service] += max(0.0, seconds - self._service_start.get(pid, 0.0))
        self.seconds = {role: delta[role] for role in self.ours}
        self.worker_main_seconds = max(0.0, delta["worker_main"])  # part of "worker", not added again
        others = delta["machine_busy"] - sum(self.seconds.values())
        self.others_cores = max(0.0, others / delta["wall"]) if delta["wall"] > 0 else 0.0
        self.wall = delta["wall"]

    @classmethod
    def combined(cls, meters: Sequence[CpuMeter]) -> CpuMeter:
        """One meter for several blocks of the same stack, as if they had run as one."""
        total = cls(meters[0]._stack)
        total.seconds = {role: sum(m.seconds.get(role, 0.0) for m in meters) for role in total.ours}
        total.worker_main_seconds = sum(m.worker_main_seconds for m in meters)
        total.wall = sum(m.wall for m in meters)
        busy_elsewhere = sum(m.others_cores * m.wall for m in meters)
        total.others_cores = busy_elsewhere / total.wall if total.wall > 0 else 0.0
        return total

    def per_thousand(self, events: int, unit: str = "events") -> str:
        parts = [f"{role} {self.per_thousand_of(role, events):.2f}" for role in self.ours]
        return f"{self.per_thousand_total(events):.2f} CPU-s per 1,000 {unit} ({', '.join(parts)})"

    def per_thousand_of(self, role: str, events: int) -> float:
        """CPU seconds of one process group (api, worker, ...) per 1,000 events; 0 if it had none."""
        return 1000 * self.seconds.get(role, 0.0) / events

    def worker_main_per_thousand(self, events: int) -> float:
        """CPU seconds of the worker's main process(es) alone per 1,000 events (a part of "worker")."""
        return 1000 * self.worker_main_seconds / events

    def per_thousand_total(self, events: int) -> float:
        """CPU seconds of every process of the run (the load generator included) per 1,000 events."""
        return 1000 * sum(self.seconds.values()) / events

    def others(self) -> str:
        return f"other processes on the machine used {self.others_cores:.2f} cores meanwhile"

    def ceiling(self, events: int, cores: int) -> float:
        """Events/s this machine could carry at this CPU cost per event, if nothing else ran on it."""
        return cores * events / sum(self.seconds.values())


class CollectorPauses:
    """The bench process's own full garbage collections while it measures: it is the load generator,
    so such a pause stops its clients, and the latency runs count it as the platform's latency."""

    def __init__(self) -> None:
        self.durations_ms: list[float] = []
        self._started = 0.0

    def _on_gc(self, phase: str, info: dict[str, int]) -> None:
        if info["generation"] != 2:
            return
        if phase == "start":
            self._started = time.perf_counter()
        else:
            self.durations_ms.append((time.perf_counter() - self._started) * 1000)

    def __enter__(self) -> CollectorPauses:
        gc.callbacks.append(self._on_gc)
        return self

    def __exit__(self, *_: object) -> None:
        gc.callbacks.remove(self._on_gc)

    def line(self) -> str:
        if not self.durations_ms:
            return "none"
        return f"{len(self.durations_ms)}, the longest {max(self.durations_ms):.0f} ms"


# Those inside the measured runs (`collector_settled`), printed in the table.
LOAD_GENERATOR_PAUSES = CollectorPauses()


@contextlib.contextmanager
def collector_settled() -> Iterator[None]:
    """A measured run in which the bench's own heap (Django, the run's planned traffic) is out of
    the garbage collector's walks. Without it this process, the load generator, made five full
    collections inside the measured runs of one `make bench`, the longest 264 ms
    (docs/benchmarks.md, "Levers, twelfth round"): one inside a latency run stops the clients, and
    the run would count it as the platform's latency. Unfrozen after, so the run's objects can be
    freed."""
    gc.collect()
    gc.freeze()
    try:
        with LOAD_GENERATOR_PAUSES:
            yield
    finally:
        gc.unfreeze()


class MemorySampler:
    """Peak memory of each role's process tree: RSS summed over its processes, and PSS (shared pages
    of forked processes counted once)."""

    def __init__(self, stack: Platform) -> None:
        self._stack = stack
        self.peak_rss: dict[str, int] = {"api": 0, "worker": 0}
        self.peak_pss: dict[str, int] = {"api": 0, "worker": 0}
        self.peak_processes: dict[str, int] = {"api": 0, "worker": 0}
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="memory-sampler", daemon=True)

    def __enter__(self) -> MemorySampler:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()

    def line(self, role: str) -> str:
        return (
            f"RSS {_mib(self.peak_rss[role])} summed over {self.peak_processes[role]} processes, "
            f"PSS {_mib(self.peak_pss[role])}"
        )

    def _run(self) -> None:
        import psutil

        while not self._stop.is_set():
            for role in ("api", "worker"):
                rss = pss = 0
                processes = self._stack.tree(role)
                for process in processes:
                    with contextlib.suppress(psutil.Error):
                        info = process.memory_full_info()
                        rss += info.rss
                        pss += getattr(info, "pss", info.rss)
                if rss > self.peak_rss[role]:
                    self.peak_rss[role] = rss
                    self.peak_processes[role] = len(processes)
                self.peak_pss[role] = max(self.peak_pss[role], pss)
            self._stop.wait(RSS_SAMPLE_SECONDS)


@contextlib.contextmanager
def profiled(stack: Platform, folder: str, name: str, *, rate: int = 100) -> Iterator[None]:
    """py-spy records the API and worker trees (all their processes) while the block runs:
    `<folder>/<role>-<name>.folded`, for benchmarks/profile_summary.py."""
    if not folder:
        yield
        return
    out = Path(folder)
    out.mkdir(parents=True, exist_ok=True)
    py_spy = shutil.which("py-spy") or str(Path(sys.executable).parent / "py-spy")
    recorders = []
    for role in ("api", "worker"):
        root = stack.tree(role)[0]
        recorders.append(
            subprocess.Popen(
                [
                    py_spy,
                    "record",
                    "--pid",
                    str(root.pid),
                    "--subprocesses",
                    "--rate",
                    str(rate),
                    "--format",
                    "raw",
                    "--output",
                    str(out / f"{role}-{name}.folded"),
                    "--nonblocking",
                    "--gil",  # only threads holding the GIL: Python CPU time, not waits
                ],
                stdout=subprocess.DEVNULL,
                stderr=subprocess.DEVNULL,
            )
        )
    try:
        yield
    finally:
        for recorder in recorders:
            recorder.send_signal(signal.SIGINT)
        for recorder in recorders:
            recorder.wait(timeout=60)


# --- the runs -------------------------------------------------------------------------------------------


def _stored_mark() -> int:
    """The newest stored row's id: a run counts only rows after it (cheap to count while polling)."""
    from django.db.models import Max

    from events.models import StoredEvent

    return StoredEvent.objects.aggregate(last=Max("id"))["last"] or 0


def _wait_stored(*, after: int, events: int, timeout: float, what: str, tenant: str = TENANT) -> float:
    """Poll the event store until `events` events of the tenant were stored after row `after`;
    returns the monotonic time it saw them."""
    from events.models import StoredEvent

    deadline = time.monotonic() + timeout
    while True:
        count = StoredEvent.objects.filter(tenant=tenant, id__gt=after).count()
        now = time.monotonic()
        if count >= events:
            return now
        if now > deadline:
            raise RuntimeError(f"{what}: only {count} of {events} events stored after {timeout:.0f} s")
        time.sleep(POLL_SECONDS)


@dataclass
class E2EResult:
    events: int
    seconds: float
    ingest_seconds: float  # until the last response (batched) or publish (naive)
    cpu: CpuMeter

    @property
    def per_second(self) -> float:
        return self.events / self.seconds


def run_batched(
    stack: Platform,
    config: BenchConfig,
    *,
    events: int,
    profile: str = "",
    one_address: bool | None = None,
    tenant: str = TENANT,
) -> E2EResult:
    from benchmarks.loadgen import LoadConfig, TrafficGenerator, plan_requests, run_load

    traffic = TrafficGenerator(seed=7).take(events)  # generated before the clock starts
    requests = list(plan_requests(traffic, total=events, batch=config.batch))
    before = _stored_mark()
    load = LoadConfig(
        url=stack.url,
        key=stack.api_key if tenant == TENANT else _fresh_tenant_key(tenant),
        events=events,
        batch=config.batch,
        concurrency=config.clients,
        forwarded_for=not (config.one_address if one_address is None else one_address),
    )
    profiling = profiled(stack, profile, "batched", rate=config.profile_rate)
    with profiling, collector_settled(), CpuMeter(stack) as cpu:
        summary = run_load(load, requests=requests, progress=False)
        if summary.accepted != events:
            raise RuntimeError(f"batched run: {summary.accepted} of {events} accepted: {summary.as_dict()}")
        done = _wait_stored(
            after=before, events=events, timeout=config.timeout, what="batched run", tenant=tenant
        )
    return E2EResult(events=events, seconds=done - summary.started, ingest_seconds=summary.elapsed, cpu=cpu)


def _fresh_tenant_key(slug: str) -> str:
    """A tenant of the run's own: its fraud windows and scores start empty, as the batched run's
    do, so no run pays for another's history (a window's cost grows with the events it holds)."""
    from tenants.models import Tenant
    from tenants.services import tenant_create, tenant_rotate_key

    if Tenant.objects.filter(slug=slug).exists():
        return tenant_rotate_key(slug=slug).key
    return tenant_create(slug=slug, name=RUN_TENANT_NAMES.get(slug, slug)).key


def run_sdk(stack: Platform, config: BenchConfig, *, events: int, tenant: str) -> E2EResult:
    """Traffic like the batched run's through the Segment-compatible `/v1/batch` (gzip, as the
    SDKs send it by default): same generator, batch size and clients, measured the same way."""
    from benchmarks.loadgen import TrafficGenerator, plan_requests
    from benchmarks.sdk_load import run_segment_load

    key = stack.api_key if tenant == TENANT else _fresh_tenant_key(SDK_TENANT)
    traffic = TrafficGenerator(seed=7).take(events)  # the batched run's events (on another tenant)
    batches = list(plan_requests(traffic, total=events, batch=config.batch))
    before = _stored_mark()
    with collector_settled(), CpuMeter(stack) as cpu:
        summary = run_segment_load(
            url=stack.url,
            key=key,
            batches=batches,
            clients=config.clients,
            compress=True,
            forwarded_for=not config.one_address,
        )
        if summary.accepted != events:
            raise RuntimeError(f"SDK run: {summary.accepted} of {events} accepted: {summary.other_answers}")
        done = _wait_stored(
            after=before, events=events, timeout=config.timeout, what="SDK run", tenant=tenant
        )
    return E2EResult(events=events, seconds=done - summary.started, ingest_seconds=summary.elapsed, cpu=cpu)


def _enriched_events(n: int, *, one_address: bool, tenant: str = TENANT) -> list[dict[str, Any]]:
    """Events as the API would publish them (its own validation and enrichment), made in advance."""
    from benchmarks.loadgen import enriched_events

    return enriched_events(n, tenant=tenant, one_address=one_address)


def run_naive(stack: Platform, config: BenchConfig, *, events: int) -> E2EResult:
    from django.conf import settings

    from benchmarks.naive_tasks import TASK_NAME
    from cloudscale_project.celery import app

    prepared = _enriched_events(events, one_address=config.one_address)
    before = _stored_mark()
    with collector_settled(), CpuMeter(stack) as cpu:
        started = time.monotonic()
        with app.producer_or_acquire() as producer:
            for event in prepared:
                app.send_task(
                    TASK_NAME,
                    kwargs={"tenant": TENANT, "event": event, "correlation_id": event["correlation_id"]},
                    queue=settings.QUEUE_NAME,
                    producer=producer,
                    ignore_result=True,
                )
        published = time.monotonic()
        done = _wait_stored(after=before, events=events, timeout=config.timeout, what="naive run")
    return E2EResult(events=events, seconds=done - started, ingest_seconds=published - started, cpu=cpu)


def _messages_since(before: int | None) -> int | None:
    after = _messages_published()
    return None if before is None or after is None else after - before


def _messages_published() -> int | None:
    """Messages published to the ingestion queue so far (embedded broker only: the count of its
    wake stream, which gets one entry per publish, ops/redis_transport.py); None elsewhere."""
    from django.conf import settings

    if not settings.CELERY_BROKER_URL.startswith("redis://"):
        return None
    import redis

    from ops.redis_transport import wake_key

    client = redis.Redis.from_url(settings.CELERY_BROKER_URL)
    try:
        return int(client.xinfo_stream(wake_key(settings.QUEUE_NAME))["entries-added"])
    except (redis.RedisError, KeyError):
        return None
    finally:
        client.close()


@dataclass
class LatencyResult:
    p50_ms: float
    p95_ms: float
    p99_ms: float
    requests: int
    seconds: float
    failures: int
    accepted: int
    cpu: CpuMeter
    messages: int | None = None  # broker messages the accepted requests took (group commit)
    latencies: list[float] = field(default_factory=list, repr=False)  # seconds, every answered request

    @property
    def per_second(self) -> float:
        return self.requests / self.seconds

    @classmethod
    def pooled(cls, rounds: Sequence[LatencyResult]) -> LatencyResult:
        """The rounds of one side as one run: requests and seconds added, percentiles over every
        request of every round."""
        from benchmarks.loadgen import nearest_rank_percentile

        latencies = sorted(latency for result in rounds for latency in result.latencies)
        messages = [result.messages for result in rounds]
        return cls(
            p50_ms=nearest_rank_percentile(latencies, 50) * 1000,
            p95_ms=nearest_rank_percentile(latencies, 95) * 1000,
            p99_ms=nearest_rank_percentile(latencies, 99) * 1000,
            requests=sum(result.requests for result in rounds),
            seconds=sum(result.seconds for result in rounds),
            failures=sum(result.failures for result in rounds),
            accepted=sum(result.accepted for result in rounds),
            cpu=CpuMeter.combined([result.cpu for result in rounds]),
            messages=None if None in messages else sum(m for m in messages if m is not None),
            latencies=latencies,
        )

    def line(self) -> str:
        return (
            f"p50 {self.p50_ms:.1f} ms  p95 {self.p95_ms:.1f} ms  p99 {self.p99_ms:.1f} ms  "
            f"({self.per_second:,.0f} req/s, {self.failures} not 202)"
        )

    def grouping(self) -> str:
        return _grouping(self.accepted, self.messages)


def _grouping(accepted: int, messages: int | None) -> str:
    """How far the group commit coalesced single-event requests."""
    if not messages or not accepted:
        return "broker messages: not counted on this broker"
    return f"{accepted:,} events in {messages:,} broker messages ({accepted / messages:.2f} per message)"


def run_latency(
    stack: Platform, config: BenchConfig, *, path: str | None, seed: int, profile: str = ""
) -> LatencyResult:
    from benchmarks.loadgen import LoadConfig, TrafficGenerator, plan_requests, run_load

    traffic = TrafficGenerator(seed=seed).take(config.latency_requests)
    load = LoadConfig(
        url=stack.url,
        key=stack.api_key,
        events=config.latency_requests,
        batch=1,
        concurrency=config.latency_clients,
        forwarded_for=not config.one_address,
        path=path,
    )
    before = _stored_mark()
    messages_before = _messages_published()
    profiling = profiled(stack, profile, "single", rate=config.profile_rate)
    with profiling, collector_settled(), CpuMeter(stack) as cpu:
        summary = run_load(load, requests=plan_requests(traffic, total=len(traffic), batch=1), progress=False)
        if path is None:  # the worker's share of these requests counts, not the next run's
            _wait_stored(after=before, events=summary.accepted, timeout=config.timeout, what="latency run")
    ok = summary.statuses.get("202", 0)
    return LatencyResult(
        p50_ms=summary.latency_ms(50) or 0.0,
        p95_ms=summary.latency_ms(95) or 0.0,
        p99_ms=summary.latency_ms(99) or 0.0,
        requests=summary.requests,
        seconds=summary.elapsed,
        failures=summary.requests - ok,
        accepted=summary.accepted if path is None else 0,
        cpu=cpu,
        messages=_messages_since(messages_before) if path is None else None,
        latencies=summary.latencies,
    )


@dataclass
class LatencyRounds:
    """The latency phase: the floor's and the API's runs under the same clients, alternating."""

    floor_rounds: list[LatencyResult]
    api_rounds: list[LatencyResult]

    @cached_property
    def floor(self) -> LatencyResult:
        return LatencyResult.pooled(self.floor_rounds)

    @cached_property
    def api(self) -> LatencyResult:
        return LatencyResult.pooled(self.api_rounds)

    @property
    def single_vs_floor(self) -> float:
        """Single events' requests/s over the floor's, every round of each side together."""
        return self.api.per_second / self.floor.per_second

    def ratios(self) -> list[float]:
        """Single events' requests/s over the floor's, round by round."""
        pairs = zip(self.floor_rounds, self.api_rounds, strict=True)
        return [api.per_second / floor.per_second for floor, api in pairs]


def run_latency_rounds(stack: Platform, config: BenchConfig) -> LatencyRounds:
    """`latency_rounds` runs of the trivial view and of single events, each side first in every other
    round, so a machine that speeds up or slows down during the phase weighs on both sides alike
    (one run of each, minutes apart on a noisy machine, moved the ratio by a third). Only the
    first round of single events is profiled (CLOUDSCALE_BENCH_PROFILE)."""
    from benchmarks.sidebyside import in_round_order

    rounds = LatencyRounds(floor_rounds=[], api_rounds=[])
    sides = {"floor": rounds.floor_rounds, "api": rounds.api_rounds}
    for round_ in range(1, config.latency_rounds + 1):
        for side, results in in_round_order(sides, round_):
            seed = 1 + 2 * round_ + (0 if side == "floor" else 1)
            if side == "floor":
                results.append(run_latency(stack, config, path="/bench/noop", seed=seed))
            else:
                profile = config.profile_dir if round_ == 1 else ""
                results.append(run_latency(stack, config, path=None, seed=seed, profile=profile))
        floor, api = rounds.floor_rounds[-1], rounds.api_rounds[-1]
        _step(
            f"  round {round_}: single events {api.per_second:,.0f} req/s, floor {floor.per_second:,.0f} "
            f"({rounds.ratios()[-1]:.2f})"
        )
    return rounds


@dataclass
class OpenLoopResult:
    rate: float
    p50_ms: float
    p99_ms: float
    requests: int
    late: int  # requests that left more than OPEN_LOOP_LATE_SECONDS after their scheduled time
    failures: int
    cpu: CpuMeter
    accepted: int = 0
    messages: int | None = None

    def grouping(self) -> str:
        return _grouping(self.accepted, self.messages)

    def demand(self) -> str:
        """The cores the offered rate needs at the run's CPU per request: past the machine's cores a
        queue forms whatever the code's latency, and p99 measures that queue."""
        cores = self.rate * self.cpu.per_thousand_total(self.requests) / 1000
        return f"at that CPU cost {self.rate:,.0f} req/s need {cores:.2f} of the {os.cpu_count()} cores"

    def line(self) -> str:
        return (
            f"p50 {self.p50_ms:.1f} ms  p99 {self.p99_ms:.1f} ms  at {self.rate:,.0f} req/s offered "
            f"({self.requests} requests, {self.failures} not 202, {self.late} sent late)"
        )


# Enough senders that a steady rate never waits for a free one while the server keeps up; when it
# does not, requests queue for a sender and that wait counts in their latency (as it would for
# real clients that do not slow down).
OPEN_LOOP_SENDERS = 64
OPEN_LOOP_LATE_SECONDS = 0.05


def run_open_loop(stack: Platform, config: BenchConfig, *, path: str | None, seed: int) -> OpenLoopResult:
    """Single-event requests on a fixed schedule (`open_rate` per second): each one's latency runs
    from the time it was due, so a server that falls behind shows it (no coordinated omission)."""
    import httpx

    from benchmarks.loadgen import USER_AGENT, LoadConfig, TrafficGenerator, send_request

    traffic = TrafficGenerator(seed=seed).take(config.open_requests)
    load = LoadConfig(
        url=stack.url, key=stack.api_key, events=len(traffic), batch=1,
        forwarded_for=not config.one_address, path=path,
    )  # fmt: skip
    headers = {
        "Authorization": f"Bearer {stack.api_key}",
        "Content-Type": "application/json",
        "User-Agent": USER_AGENT,
    }
    interval = 1.0 / config.open_rate
    lock = threading.Lock()
    latencies: list[float] = []
    counts = {"next": 0, "late": 0, "failures": 0}
    stop = threading.Event()

    def sender(client: httpx.Client, start: float) -> None:
        while True:
            with lock:
                index = counts["next"]
                counts["next"] += 1
            if index >= len(traffic):
                return
            due = start + index * interval
            now = time.perf_counter()
            if due > now:
                time.sleep(due - now)
            elif now - due > OPEN_LOOP_LATE_SECONDS:
                with lock:
                    counts["late"] += 1
            outcome = send_request(client, [traffic[index]], load, stop)
            done = time.perf_counter()
            with lock:
                latencies.append(done - due)
                if outcome.statuses.get("202", 0) != 1:
                    counts["failures"] += 1

    # Clients (one keep-alive connection each) are made before the clock starts: making one costs
    # milliseconds of CPU that would otherwise land on the first requests.
    limits = httpx.Limits(max_connections=1, max_keepalive_connections=1)
    clients = [
        httpx.Client(base_url=stack.url, headers=headers, timeout=30, limits=limits)
        for _ in range(OPEN_LOOP_SENDERS)
    ]
    before = _stored_mark()
    messages_before = _messages_published()
    accepted = 0
    try:
        with collector_settled(), CpuMeter(stack) as cpu:
            start = time.perf_counter() + 0.1
            threads = [
                threading.Thread(target=sender, args=(client, start), name=f"open-loop-{n}", daemon=True)
                for n, client in enumerate(clients)
            ]
            for thread in threads:
                thread.start()
            for thread in threads:
                thread.join()
            if path is None:  # the worker's share of these requests counts, not the next run's
                accepted = len(latencies) - counts["failures"]
                _wait_stored(after=before, events=accepted, timeout=config.timeout, what="open-loop run")
    finally:
        for client in clients:
            client.close()
    ordered = sorted(latencies)

    def percentile(p: float) -> float:
        return 1000 * ordered[max(0, math.ceil(p / 100 * len(ordered)) - 1)] if ordered else 0.0

    return OpenLoopResult(
        rate=config.open_rate,
        p50_ms=percentile(50),
        p99_ms=percentile(99),
        requests=len(ordered),
        late=counts["late"],
        failures=counts["failures"],
        cpu=cpu,
        accepted=accepted,
        messages=_messages_since(messages_before) if path is None else None,
    )


# --- the report -------------------------------------------------------------------------------------------


def _machine() -> str:
    model = "unknown CPU"
    with contextlib.suppress(OSError):
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                model = line.split(":", 1)[1].strip()
                break
    memory = ""
    with contextlib.suppress(ImportError):
        import psutil

        memory = f", {psutil.virtual_memory().total / 2**30:.1f} GiB RAM"
    return f"{os.cpu_count()} CPUs ({model}){memory}, Python {platform.python_version()}"


def _mib(n: int) -> str:
    return f"{n / 2**20:,.0f} MiB"


def _table(rows: list[tuple[str, str]]) -> str:
    width = max(len(name) for name, _ in rows)
    return "\n".join(f"  {name:<{width}}  {value}" for name, value in rows)


def _step(message: str) -> None:
    print(f"[bench] {message}", file=sys.stderr, flush=True)


def _worker_main_share(cpu: CpuMeter, n: int) -> str:
    return f"{cpu.worker_main_per_thousand(n):.3f} of the worker's {cpu.per_thousand_of('worker', n):.3f}"


def _profile_section(config: BenchConfig, phases: list[tuple[str, CpuMeter, int, str]]) -> str:
    """Where the CPU went: per phase and process group; with CLOUDSCALE_BENCH_PROFILE, by function too."""
    lines = ["profile: CPU seconds per 1,000 events or requests, by process group"]
    rows = [(name, cpu.per_thousand(n, unit)) for name, cpu, n, unit in phases]
    lines.append(_table(rows))
    main = [(name, _worker_main_share(cpu, n)) for name, cpu, n, _ in phases]
    lines.append("  of which the worker's main process(es): reading, dispatching and acking messages")
    lines.append(_table(main))
    folder = Path(config.profile_dir) if config.profile_dir else None
    if folder is None:
        lines.append(
            "  (set CLOUDSCALE_BENCH_PROFILE=<folder> for py-spy profiles of the batched and single runs)"
        )
        return "\n".join(lines)
    from benchmarks.profile_summary import summarize

    for path in sorted(folder.glob("*.folded")):
        role = "api" if path.stem.startswith("api") else "worker"
        lines.append(summarize(path, role, top=8))
    return "\n".join(lines)


def _setup_django(stack: Platform) -> None:
    """This process reads the platform's database and publishes to its broker: same settings."""
    os.environ.clear()  # e.g. a CLOUDSCALE_QUEUE of the caller would point this process elsewhere
    os.environ.update(stack.env)
    import django

    django.setup()


@dataclass
class Measured:
    """The runs of one bench; a phase left out by CLOUDSCALE_BENCH_PHASES is None."""

    batched: E2EResult | None = None
    sdk: E2EResult | None = None
    hot: E2EResult | None = None
    naive: E2EResult | None = None
    latency: LatencyRounds | None = None
    open_floor: OpenLoopResult | None = None
    open_api: OpenLoopResult | None = None


PREFILL_CHUNK = 5_000


def prefill(config: BenchConfig) -> None:
    """Age the tables: `prefill_events` events for each tenant a batched run writes, stored by the
    task body's own steps in this process (store, scoring, the cart step), not measured.

    The fraud step is left out, and so are the API and broker: the windows of the fraud rules keep
    only the last minutes, and events of the bench's 2,000 users packed into the seconds before a
    run would hold them far fuller than any deployment's. What a deployment has and a fresh bench
    has not is old rows under the database's indexes. (The `make run` run starts a platform of its
    own, which is not aged.)"""
    import orjson

    from cloudscale_project.serialization import orjson_dumps
    from events.pipeline import BatchMessage, Pipeline, batch_process, default_pipeline

    full = default_pipeline()
    without_fraud = Pipeline(
        store=full.store,
        before_store=tuple(step for step in full.before_store if not _is_fraud(step)),
        after_store=full.after_store,
    )
    tenants = [
        tenant
        for tenant, phase in ((TENANT, "batched"), (SDK_TENANT, "sdk"), (HOT_TENANT, "hot"))
        if phase in config.phases
    ]
    for tenant in tenants:
        if tenant != TENANT:
            _fresh_tenant_key(tenant)  # created before its events, under its own name
        stored = 0
        while stored < config.prefill_events:
            n = min(PREFILL_CHUNK, config.prefill_events - stored)
            events = orjson.loads(orjson_dumps(_enriched_events(n, one_address=False, tenant=tenant)))
            outcome = batch_process(
                message=BatchMessage(tenant=tenant, events=events, correlation_id="bench-prefill"),
                attempt=1,
                pipeline=without_fraud,
            )
            if len(outcome.stored) != n:
                raise RuntimeError(f"prefill: {len(outcome.stored)} of {n} events stored: {outcome.counts()}")
            stored += n
            if stored % 50_000 == 0 or stored == config.prefill_events:
                _step(f"prefill: {stored:,} of {config.prefill_events:,} events stored for tenant {tenant}")


def _is_fraud(step: Any) -> bool:
    return str(getattr(step, "__module__", "")).startswith("fraud.")


def _aged(config: BenchConfig) -> str:
    return f", tables aged by {config.prefill_events:,} events a tenant" if config.prefill_events else ""


def measure(stack: Platform, config: BenchConfig) -> Measured:
    """Every chosen run of the bench, one after the other, after a warm-up."""
    phases, m = config.phases, Measured()
    if config.prefill_events:
        prefill(config)
    _step("warm-up (forks, imports, first connections)")
    run_batched(stack, config, events=min(WARMUP_BATCHES * config.batch, config.events))
    if "hot" in phases:  # its tenant gets the same warm-up as the batched run's
        run_batched(
            stack, config, events=min(WARMUP_BATCHES * config.batch, config.events),
            one_address=True, tenant=HOT_TENANT,
        )  # fmt: skip
    if "sdk" in phases:  # on the demo tenant, whose windows the warm-up already filled
        run_sdk(stack, config, events=min(WARMUP_BATCHES * config.batch, config.events), tenant=TENANT)
    if "naive" in phases:
        run_naive(stack, config, events=min(WARMUP_NAIVE_EVENTS, config.naive_events))
    if phases & {"latency", "open"}:
        warm = replace(config, latency_requests=min(WARMUP_REQUESTS, config.latency_requests))
        run_latency(stack, warm, path="/bench/noop", seed=1)
        run_latency(stack, warm, path=None, seed=2)

    if "batched" in phases:
        _step(f"batched: {config.events:,} events in batches of {config.batch}, {config.clients} clients")
        m.batched = run_batched(stack, config, events=config.events, profile=config.profile_dir)
        _step(f"  {m.batched.per_second:,.0f} events/s; {m.batched.cpu.per_thousand(m.batched.events)}")
    if "sdk" in phases:
        _step(f"SDK: the same through /v1/batch (Segment format, gzip), {config.clients} clients")
        m.sdk = run_sdk(stack, config, events=config.events, tenant=SDK_TENANT)
        _step(f"  {m.sdk.per_second:,.0f} events/s; {m.sdk.cpu.per_thousand(m.sdk.events)}")
    if "hot" in phases:
        hot_events = config.hot_events or config.events
        _step(f"batched, every event from one address: {hot_events:,} events")
        m.hot = run_batched(stack, config, events=hot_events, one_address=True, tenant=HOT_TENANT)
        _step(f"  {m.hot.per_second:,.0f} events/s; {m.hot.cpu.per_thousand(m.hot.events)}")
    if "naive" in phases:
        _step(f"naive: {config.naive_events:,} events, one task and one store write each")
        m.naive = run_naive(stack, config, events=config.naive_events)
        _step(f"  {m.naive.per_second:,.0f} events/s; {m.naive.cpu.per_thousand(m.naive.events)}")
    if "latency" in phases:
        _step(
            f"latency: {config.latency_rounds} rounds of {config.latency_requests:,} requests from "
            f"{config.latency_clients} clients, each side"
        )
        m.latency = run_latency_rounds(stack, config)
    if "open" in phases:
        _step(f"open loop: {config.open_requests:,} requests at {config.open_rate:,.0f}/s, each")
        m.open_floor = run_open_loop(stack, config, path="/bench/noop", seed=5)
        m.open_api = run_open_loop(stack, config, path=None, seed=6)
    return m


@dataclass
class MakeRunResult:
    """Run 7: `make run`'s configuration beside the bench's, on platforms of their own, alternating."""

    events_per_s: float  # make run's runs, their mean
    cpu_line: str  # make run's first run, by process group
    pool_peak: int
    describe: str  # the child's own account of its run: events, batch, clients, stack
    rounds: list[tuple[float, float]]  # (make run, bench) CPU-s per 1,000 events, round by round

    @property
    def cpu_s_per_1k(self) -> float:
        """make run's runs: CPU-s of all processes per 1,000 events, their mean."""
        return statistics.fmean(make_run for make_run, _ in self.rounds)

    @property
    def beside_cpu_s_per_1k(self) -> float:
        """The bench's configuration in the same rounds, their mean."""
        return statistics.fmean(bench for _, bench in self.rounds)

    @property
    def ratio(self) -> float:
        """CPU per event, make run's configuration over the bench's, side by side."""
        return self.cpu_s_per_1k / self.beside_cpu_s_per_1k


def make_run_order(rounds: int) -> list[bool]:
    """Which configuration each child bench of run 7 starts, in turn (True: `make run`'s): the
    bench's first in odd rounds, `make run`'s first in even ones, so that neither side always
    runs first or on a machine a minute further into its swings (docs/benchmarks.md, "Levers,
    twenty-ninth round")."""
    order: list[bool] = []
    for round_ in range(rounds):
        order += [False, True] if round_ % 2 == 0 else [True, False]
    return order


def _child_bench(config: BenchConfig, *, as_users: bool) -> dict[str, Any]:
    """The FIGURES of a batched-only bench of `config.make_run_events` events in a child process,
    its platform started as `make run` does (`as_users`) or with the bench's tuning."""
    env = {
        **_CALLER_ENV,  # this process's own environment was replaced by the platform's
        "CLOUDSCALE_BENCH_PHASES": "batched",
        "CLOUDSCALE_BENCH_EVENTS": str(config.make_run_events),
        "CLOUDSCALE_BENCH_PROFILE": "",
    }
    env.pop("CLOUDSCALE_BENCH_AS_USERS", None)
    env.pop("CLOUDSCALE_BENCH_KEEP_STATE", None)  # its output is not shown: nobody would find them
    if as_users:
        env["CLOUDSCALE_BENCH_AS_USERS"] = "1"
    done = subprocess.run(
        [sys.executable, str(Path(__file__).resolve())], env=env, capture_output=True, text=True, check=False
    )
    figures = next((line for line in done.stdout.splitlines() if line.startswith("FIGURES ")), "")
    if done.returncode != 0 or not figures:
        which = "make-run" if as_users else "side-by-side"
        raise RuntimeError(f"the {which} bench failed:\n{done.stderr[-3000:]}")
    import json

    values: dict[str, Any] = json.loads(figures.removeprefix("FIGURES "))
    return values


def run_as_users(config: BenchConfig) -> MakeRunResult | None:
    """The batched traffic against platforms started as `make run` does and as the bench does,
    alternating, each in a child bench (this process's Django already points at the first
    platform's database)."""
    if config.make_run_events <= 0 or not config.complete or config.as_users:
        return None
    _step(
        f"as make run starts it, beside the bench's configuration: {config.make_run_rounds} round(s) "
        f"of {config.make_run_events:,} events each in batches of {config.batch}"
    )
    runs: dict[bool, list[dict[str, Any]]] = {True: [], False: []}
    for as_users in make_run_order(config.make_run_rounds):
        values = _child_bench(config, as_users=as_users)
        runs[as_users].append(values)
        side = "make run's configuration" if as_users else "the bench's configuration"
        _step(f"  {side}: {values['e2e_events_per_s']:,} events/s; {values['cpu_line']}")
    users, bench = runs[True], runs[False]
    return MakeRunResult(
        events_per_s=statistics.fmean(v["e2e_events_per_s"] for v in users),
        cpu_line=users[0]["cpu_line"],
        pool_peak=max(v["worker_processes_peak"] for v in users),
        describe=users[0]["run"],
        rounds=[(u["cpu_s_per_1k"], b["cpu_s_per_1k"]) for u, b in zip(users, bench, strict=True)],
    )


def _rows(config: BenchConfig, stack: Platform, m: Measured, memory: MemorySampler) -> list[tuple[str, str]]:
    """The table, one section per run that ran."""
    cores = os.cpu_count() or 1
    threads = os.environ.get("GUNICORN_THREADS", "8")
    clients = config.latency_clients
    addresses = "all 127.0.0.1" if config.one_address else "one per session (X-Forwarded-For)"
    events_off = "task events on, beat and Flower running" if stack.as_users else "task events off"
    rows = [
        ("machine", _machine()),
        ("stack", stack.describe()),
        ("", f"client addresses: {addresses}"),
        ("", f"gunicorn {config.api_workers} workers x {threads} threads"),
        ("", f"Celery prefork --autoscale {stack.autoscale}, prefetch x2, {events_off}, orjson messages"),
        ("", ""),
    ]
    batched = m.batched
    if batched is not None:
        rows += [
            ("batched e2e (POST /api/events/batch)", f"{batched.per_second:,.0f} events/s"),
            ("", f"{batched.events:,} events, batches of {config.batch}, {config.clients} clients"
                 f"{_aged(config)}"),
            ("", f"all stored after {batched.seconds:.1f} s, accepted after {batched.ingest_seconds:.1f} s"),
            ("", batched.cpu.per_thousand(batched.events)),
            ("", batched.cpu.others()),
            ("", f"at that CPU cost {cores} idle cores would carry "
                 f"{batched.cpu.ceiling(batched.events, cores):,.0f} events/s"),
        ]  # fmt: skip
    if m.sdk is not None:
        rows += [
            ("SDK e2e (POST /v1/batch, gzip)", f"{m.sdk.per_second:,.0f} events/s"),
            ("", f"{m.sdk.events:,} events, Segment batches of {config.batch}, {config.clients} clients"),
            ("", m.sdk.cpu.per_thousand(m.sdk.events)),
            ("", m.sdk.cpu.others()),
        ]
        if batched is not None:
            # The client's CPU is left out: the bench's own sender (gzip, message shape) is not the server's.
            server = ("api", "worker", "redis")
            sdk_cost_ratio = (sum(m.sdk.cpu.seconds[r] for r in server) / m.sdk.events) / (
                sum(batched.cpu.seconds[r] for r in server) / batched.events
            )
            rows.append(
                ("SDK / batched, server CPU per event", f"{sdk_cost_ratio:.2f}x (API + worker + Redis)")
            )
    if m.hot is not None:
        rows += [
            (
                "batched e2e, one client address",
                f"{m.hot.per_second:,.0f} events/s (every event from 127.0.0.1)",
            ),
            ("", f"{m.hot.events:,} events: all stored after {m.hot.seconds:.1f} s"),
            ("", m.hot.cpu.per_thousand(m.hot.events)),
            ("", m.hot.cpu.others()),
        ]
        if batched is not None:
            rows.append(("ratio per-session / one address", f"{batched.per_second / m.hot.per_second:.2f}x"))
    if m.naive is not None:
        naive = m.naive
        rows += [
            ("naive e2e (a task per event)", f"{naive.per_second:,.0f} events/s"),
            ("", f"{naive.events:,} events: all stored after {naive.seconds:.1f} s (published after "
                 f"{naive.ingest_seconds:.1f} s)"),
            ("", naive.cpu.per_thousand(naive.events)),
            ("", naive.cpu.others()),
        ]  # fmt: skip
        if batched is not None:
            rows.append(("ratio batched / naive", f"{batched.per_second / naive.per_second:.1f}x"))
    rows.append(("", ""))
    if m.latency is not None:
        api, floor = m.latency.api, m.latency.floor
        rounds = ", ".join(f"{ratio:.2f}" for ratio in m.latency.ratios())
        rows += [
            (f"POST /api/events, {clients} clients", api.line()),
            ("", f"{api.requests:,} requests in {len(m.latency.api_rounds)} rounds; {api.grouping()}"),
            ("", api.cpu.per_thousand(api.requests, "requests")),
            ("", api.cpu.others()),
            (f"floor: trivial view, {clients} clients", floor.line()),
            ("", floor.cpu.per_thousand(floor.requests, "requests")),
            ("", floor.cpu.others()),
            ("ratio single / floor (req/s)", f"{m.latency.single_vs_floor:.2f} (round by round: {rounds})"),
            ("ratio single / floor (p99)", f"{api.p99_ms / floor.p99_ms:.2f}"),
        ]
    if m.open_api is not None and m.open_floor is not None:
        rows += [
            ("POST /api/events, open loop", m.open_api.line()),
            ("", m.open_api.grouping()),
            ("", m.open_api.cpu.per_thousand(m.open_api.requests, "requests")),
            ("", m.open_api.demand()),
            ("", m.open_api.cpu.others()),
            ("floor: trivial view, open loop", m.open_floor.line()),
            ("", m.open_floor.cpu.per_thousand(m.open_floor.requests, "requests")),
            ("", m.open_floor.demand()),
        ]
    rows += [
        ("", ""),
        ("peak memory, API (gunicorn)", memory.line("api")),
        ("peak memory, worker (Celery)", memory.line("worker")),
    ]
    return rows


def _figures(config: BenchConfig, m: Measured, memory: MemorySampler) -> dict[str, Any]:
    """Every figure of the run by name (the RESULT line's names where it has them)."""
    figures: dict[str, Any] = {}
    if m.batched is not None:
        figures |= {
            "run": f"{m.batched.events:,} events, batches of {config.batch}, {config.clients} clients, "
            f"{config.stack} stack{_aged(config)}",
            "e2e_events_per_s": round(m.batched.per_second),
            "cpu_s_per_1k": round(m.batched.cpu.per_thousand_total(m.batched.events), 3),
            "cpu_line": m.batched.cpu.per_thousand(m.batched.events),
            "worker_cpu_s_per_1k": round(m.batched.cpu.per_thousand_of("worker", m.batched.events), 4),
            "worker_main_cpu_s_per_1k": round(m.batched.cpu.worker_main_per_thousand(m.batched.events), 4),
        }
    if m.sdk is not None:
        figures["sdk_cpu_s_per_1k"] = round(m.sdk.cpu.per_thousand_total(m.sdk.events), 3)
    if m.hot is not None:
        figures["hot_events_per_s"] = round(m.hot.per_second)
        figures["hot_cpu_s_per_1k"] = round(m.hot.cpu.per_thousand_total(m.hot.events), 3)
        if m.batched is not None:
            figures["hot_ratio"] = round(m.batched.per_second / m.hot.per_second, 2)
    if m.naive is not None and m.batched is not None:
        figures["ratio_vs_naive"] = round(m.batched.per_second / m.naive.per_second, 1)
    if m.latency is not None:
        api, floor = m.latency.api, m.latency.floor
        figures |= {
            "p99_ms": round(api.p99_ms, 1),
            "floor_p99_ms": round(floor.p99_ms, 1),
            "single_req_per_s": round(api.per_second),
            "single_cpu_ms": round(api.cpu.per_thousand_total(api.requests), 2),
            "single_worker_cpu_ms": round(api.cpu.per_thousand_of("worker", api.requests), 2),
            "single_vs_floor": round(m.latency.single_vs_floor, 2),
            "single_vs_floor_rounds": [round(ratio, 2) for ratio in m.latency.ratios()],
            "single_per_message": round(api.accepted / api.messages, 2) if api.messages else None,
        }
    if m.open_api is not None and m.open_floor is not None:
        figures |= {
            "open_p99_ms": round(m.open_api.p99_ms, 1),
            "open_floor_p99_ms": round(m.open_floor.p99_ms, 1),
            "open_cpu_ms": round(m.open_api.cpu.per_thousand_total(m.open_api.requests), 2),
            "open_worker_cpu_ms": round(m.open_api.cpu.per_thousand_of("worker", m.open_api.requests), 2),
            "open_per_message": (
                round(m.open_api.accepted / m.open_api.messages, 2) if m.open_api.messages else None
            ),
        }
    figures["worker_processes_peak"] = memory.peak_processes["worker"]
    return figures


def reference_loop_ms() -> float:
    """CPU milliseconds of a fixed pure-Python loop (best of three): how fast this machine's cores
    are today. CPU figures of runs on different machines or days compare only after scaling by it
    (docs/benchmarks.md, "Levers, third round")."""
    best = math.inf
    for _ in range(3):
        started = time.process_time()
        total = 0
        for number in range(2_000_000):
            total += number
        best = min(best, time.process_time() - started)
    return round(best * 1000, 1)


def parse_arguments(argv: list[str] | None = None) -> argparse.Namespace:
    """`--help` prints the module's description; the bench itself is configured by the environment."""
    parser = argparse.ArgumentParser(
        prog="benchmarks/run.py",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
        epilog="""examples:
  make bench                                   # the embedded stack, every phase, the RESULT line
  make bench STACK=postgres                    # PostgreSQL 5432 + RabbitMQ 5672, two worker processes
  CLOUDSCALE_BENCH_PHASES=latency,open .venv/bin/python benchmarks/run.py
                                               # single-event runs only (FIGURES, no RESULT line)
  .venv/bin/python benchmarks/ab.py --help     # two settings or checkouts side by side""",
    )
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    parse_arguments(argv)
    config = BenchConfig()
    load_before = os.getloadavg()[0]
    reference_before = reference_loop_ms()
    stack = Platform(config)
    _step(f"starting the platform on {stack.url} (state {stack.state})")
    started = time.monotonic()
    try:
        stack.start()
        _setup_django(stack)
        with MemorySampler(stack) as memory:
            m = measure(stack, config)
    except BaseException:
        _step("failed; stopping the platform")
        stack.stop(keep_state=True)
        raise
    _step("stopping the platform")
    stack.stop(keep_state=config.keep_state)
    make_run = run_as_users(config)

    rows = _rows(config, stack, m, memory)
    if make_run is not None and m.batched is not None:
        bench_cost = m.batched.cpu.per_thousand_total(m.batched.events)
        rows += [
            ("", ""),
            ("as make run starts it", f"{make_run.events_per_s:,.0f} events/s, the worker at up to "
                                           f"{make_run.pool_peak} processes (main + pool)"),
            ("", f"{make_run.describe}; beat, Flower and task events on, the default pool"),
            ("", f"its first run: {make_run.cpu_line}"),
            ("", f"its runs' mean {make_run.cpu_s_per_1k:.3f} CPU-s per 1,000 events; the bench's "
                 f"configuration beside it {make_run.beside_cpu_s_per_1k:.3f} (round by round, make run / "
                 "bench: " + ", ".join(f"{u:.3f} / {b:.3f}" for u, b in make_run.rounds) + ")"),
            ("CPU per event, make run / bench", f"{make_run.ratio:.2f}x side by side; "
                 f"{make_run.cpu_s_per_1k / bench_cost:.2f}x of the batched run above"),
        ]  # fmt: skip
    reference_after = reference_loop_ms()
    rows += [
        ("", ""),
        (
            "reference loop (CPU speed)",
            f"{reference_before:.0f} ms before, {reference_after:.0f} ms after "
            "(2M additions in Python; lower is faster)",
        ),
        ("bench wall time", f"{time.monotonic() - started:.0f} s"),
        ("load generator's full GCs", f"{LOAD_GENERATOR_PAUSES.line()} (in the measured runs)"),
        ("load average (1 min)", f"{load_before:.1f} before, {os.getloadavg()[0]:.1f} after (ours included)"),
    ]
    print("CloudScale benchmark")
    print(_table(rows))
    print()
    single = m.latency.api if m.latency is not None else None
    phases = [
        (name, result.cpu, n, unit)
        for name, result, n, unit in [
            ("batched", m.batched, m.batched.events if m.batched else 0, "events"),
            ("batched, one address", m.hot, m.hot.events if m.hot else 0, "events"),
            ("naive", m.naive, m.naive.events if m.naive else 0, "events"),
            ("single-event POST, closed loop", single, single.requests if single else 0, "requests"),
            (
                "single-event POST, open loop",
                m.open_api,
                m.open_api.requests if m.open_api else 0,
                "requests",
            ),
        ]
        if result is not None
    ]
    print(_profile_section(config, phases))
    figures = _figures(config, m, memory)
    figures["reference_loop_ms"] = round((reference_before + reference_after) / 2, 1)
    if make_run is not None:
        figures["make_run_cpu_s_per_1k"] = round(make_run.cpu_s_per_1k, 4)
        figures["make_run_events_per_s"] = round(make_run.events_per_s)
        figures["make_run_beside_cpu_s_per_1k"] = round(make_run.beside_cpu_s_per_1k, 4)
        figures["make_run_vs_bench"] = round(make_run.ratio, 2)
    import json

    print("FIGURES " + json.dumps(figures), flush=True)
    if config.complete:
        f = figures
        print(
            f"RESULT e2e_events_per_s={f['e2e_events_per_s']} ratio_vs_naive={f['ratio_vs_naive']} "
            f"p99_ms={f['p99_ms']} cpu_s_per_1k={f['cpu_s_per_1k']:.3f} "
            f"single_vs_floor={f['single_vs_floor']:.2f} open_p99_ms={f['open_p99_ms']} "
            f"hot_ratio={f['hot_ratio']:.2f}",
            flush=True,
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())
