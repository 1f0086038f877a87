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
4. peak memory of the API (gunicorn) and worker (Celery) process trees, sampled throughout.

Prints a table; the last line is `RESULT e2e_events_per_s=<n> ratio_vs_naive=<x> p99_ms=<y>`.

Sizes and tuning come from the environment (defaults in brackets):
  CLOUDSCALE_BENCH_EVENTS [50000]          events of the batched run
  CLOUDSCALE_BENCH_BATCH [500]             events per batch request
  CLOUDSCALE_BENCH_CLIENTS [4]             concurrent clients of the batched run
  CLOUDSCALE_BENCH_NAIVE_EVENTS [5000]     events of the naive run
  CLOUDSCALE_BENCH_LATENCY_CLIENTS [50]    concurrent clients of the latency runs
  CLOUDSCALE_BENCH_LATENCY_REQUESTS [3000] requests per latency run (API and floor each)
  CLOUDSCALE_BENCH_API_WORKERS [2]         gunicorn worker processes (threads: GUNICORN_THREADS, 8)
  CLOUDSCALE_BENCH_AUTOSCALE [2,2]         the worker's --autoscale max,min
  CLOUDSCALE_BENCH_ONE_ADDRESS [unset]     1: every event from the bench's own address (no X-Forwarded-For)
  CLOUDSCALE_BENCH_PROFILE [unset]         a folder: py-spy records API and worker during the batched run
  CLOUDSCALE_BENCH_TIMEOUT [240]           seconds a run may take to drain before the bench fails
"""

from __future__ import annotations

import contextlib
import os
import platform
import secrets
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
import urllib.error
import urllib.request
import uuid
from collections.abc import Iterator
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

# Only once ROOT is on sys.path (this file runs as a script).
from cloudscale_project.env import env_int  # noqa: E402
from tests.netutil import free_port  # noqa: E402

TENANT = "demo"
SDK_TENANT = "demo-sdk"
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
LIFTED_LIMITS = {
    "CLOUDSCALE_RATE_LIMIT_PER_IP_CAPACITY": "1000000000",
    "CLOUDSCALE_RATE_LIMIT_PER_IP_REFILL": "1000000000",
    "CLOUDSCALE_RATE_LIMIT_GLOBAL_PER_MINUTE": "1000000000",
}


@dataclass(frozen=True)
class BenchConfig:
    events: int = field(default_factory=lambda: env_int("CLOUDSCALE_BENCH_EVENTS", 50_000))
    batch: int = field(default_factory=lambda: env_int("CLOUDSCALE_BENCH_BATCH", 500))
    clients: int = field(default_factory=lambda: env_int("CLOUDSCALE_BENCH_CLIENTS", 4))
    naive_events: int = field(default_factory=lambda: env_int("CLOUDSCALE_BENCH_NAIVE_EVENTS", 5_000))
    latency_clients: int = field(default_factory=lambda: env_int("CLOUDSCALE_BENCH_LATENCY_CLIENTS", 50))
    latency_requests: int = field(default_factory=lambda: env_int("CLOUDSCALE_BENCH_LATENCY_REQUESTS", 3_000))
    api_workers: int = field(default_factory=lambda: env_int("CLOUDSCALE_BENCH_API_WORKERS", 2))
    autoscale: str = field(default_factory=lambda: os.environ.get("CLOUDSCALE_BENCH_AUTOSCALE", "2,2"))
    profile_dir: str = field(default_factory=lambda: os.environ.get("CLOUDSCALE_BENCH_PROFILE", ""))
    one_address: bool = field(default_factory=lambda: os.environ.get("CLOUDSCALE_BENCH_ONE_ADDRESS") == "1")
    timeout: float = field(default_factory=lambda: float(env_int("CLOUDSCALE_BENCH_TIMEOUT", 240)))


_ROLE_MARKERS = {"api": "gunicorn", "worker": " worker ", "redis": "valkey-server"}


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
            CLOUDSCALE_TASK_EVENTS="false",  # no Flower in this run: task events would only cost CPU
            DJANGO_SETTINGS_MODULE="benchmarks.settings",  # the naive task and the floor view
            PYTHONUNBUFFERED="1",
        )
        self.argv = [
            sys.executable, "manage.py", "runplatform", "--port", str(self.port), "--no-flower", "--no-beat",
            "--api-workers", str(config.api_workers), "--autoscale", config.autoscale,
        ]  # fmt: skip
        self.process: subprocess.Popen[bytes] | None = None
        self._log = self.state / "runplatform.out"

    def start(self) -> None:
        with self._log.open("wb") as log:
            self.process = subprocess.Popen(
                self.argv,
                cwd=ROOT,
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
        if keep_state:
            _step(f"logs and data kept in {self.state}")
        else:
            shutil.rmtree(self.state, ignore_errors=True)


class CpuMeter:
    """CPU seconds (user + system) spent by each role's processes and by this process (the load
    generator) while the block runs, and how busy the rest of the machine was meanwhile (the
    machine is shared: other processes' CPU is capacity this run did not have)."""

    ROLES = ("api", "worker", "redis")
    OURS = (*ROLES, "client")

    def __init__(self, stack: Platform) -> None:
        self._stack = stack
        self.seconds: dict[str, float] = {}
        self.others_cores = 0.0  # average CPU cores used by processes outside this run
        self._start: dict[str, float] = {}

    def _now(self) -> dict[str, float]:
        import psutil

        totals = {}
        for role in self.ROLES:
            total = 0.0
            for process in self._stack.tree(role):
                with contextlib.suppress(psutil.Error):
                    times = process.cpu_times()
                    total += times.user + times.system
            totals[role] = total
        own = psutil.Process().cpu_times()
        totals["client"] = own.user + own.system
        machine = psutil.cpu_times()
        # Linux counts guest time inside user time already; steal is capacity the hypervisor gave away.
        not_busy = ("idle", "iowait", "guest", "guest_nice")
        totals["machine_busy"] = sum(machine) - sum(getattr(machine, name, 0.0) for name in not_busy)
        totals["wall"] = time.monotonic()
        return totals

    def __enter__(self) -> CpuMeter:
        self._start = self._now()
        return self

    def __exit__(self, *exc: object) -> None:
        end = self._now()
        delta = {key: end[key] - self._start[key] for key in end}
        self.seconds = {role: delta[role] for role in self.OURS}
        others = delta["machine_busy"] - sum(self.seconds.values())
        self.others_cores = max(0.0, others / delta["wall"]) if delta["wall"] > 0 else 0.0

    def per_thousand(self, events: int, unit: str = "events") -> str:
        parts = [f"{role} {1000 * self.seconds[role] / events:.2f}" for role in self.OURS]
        total = 1000 * sum(self.seconds.values()) / events
        return f"{total:.2f} CPU-s per 1,000 {unit} ({', '.join(parts)})"

    def others(self) -> str:
        return f"other processes on the machine used {self.others_cores:.2f} cores meanwhile"

    def ceiling(self, events: int, cores: int) -> float:
        """Events/s this machine could carry at this CPU cost per event, if nothing else ran on it."""
        return cores * events / sum(self.seconds.values())


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
def profiled(stack: Platform, folder: str, name: str) -> Iterator[None]:
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
                    "100",
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


def run_batched(stack: Platform, config: BenchConfig, *, events: int, profile: str = "") -> E2EResult:
    from benchmarks.loadgen import LoadConfig, TrafficGenerator, plan_requests, run_load

    traffic = TrafficGenerator(seed=7).take(events)  # generated before the clock starts
    requests = list(plan_requests(traffic, total=events, batch=config.batch))
    before = _stored_mark()
    load = LoadConfig(
        url=stack.url,
        key=stack.api_key,
        events=events,
        batch=config.batch,
        concurrency=config.clients,
        forwarded_for=not config.one_address,
    )
    with profiled(stack, profile, "batched"), CpuMeter(stack) as cpu:
        summary = run_load(load, requests=requests, progress=False)
        if summary.accepted != events:
            raise RuntimeError(f"batched run: {summary.accepted} of {events} accepted: {summary.as_dict()}")
        done = _wait_stored(after=before, events=events, timeout=config.timeout, what="batched run")
    return E2EResult(events=events, seconds=done - summary.started, ingest_seconds=summary.elapsed, cpu=cpu)


def _sdk_tenant_key() -> str:
    """A tenant of its own for the SDK run: fraud windows and scores start empty, as they did for
    the batched run, so neither run pays for the other's history (windows grow with events seen)."""
    from tenants.models import Tenant
    from tenants.services import tenant_create, tenant_rotate_key

    if Tenant.objects.filter(slug=SDK_TENANT).exists():
        return tenant_rotate_key(slug=SDK_TENANT).key
    return tenant_create(slug=SDK_TENANT, name="SDK benchmark").key


def run_sdk(stack: Platform, config: BenchConfig, *, events: int, tenant: str) -> E2EResult:
    """Traffic like the batched run's through the Segment-compatible `/v1/batch` (gzip, as the
    SDKs send it by default): same generator, batch size and clients, measured the same way."""
    from benchmarks.loadgen import TrafficGenerator, plan_requests
    from benchmarks.sdk_load import run_segment_load

    key = stack.api_key if tenant == TENANT else _sdk_tenant_key()
    traffic = TrafficGenerator(seed=7).take(events)  # the batched run's events (on another tenant)
    batches = list(plan_requests(traffic, total=events, batch=config.batch))
    before = _stored_mark()
    with CpuMeter(stack) as cpu:
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


def _enriched_events(n: int, *, one_address: bool) -> list[dict[str, Any]]:
    """Events as the API would publish them (its own validation and enrichment), made in advance."""
    from benchmarks.loadgen import TrafficGenerator
    from cloudscale_project.timeutil import utcnow
    from events.enrichment import enrich_event
    from events.schemas import validate_event

    enriched = []
    for planned in TrafficGenerator(seed=11).take(n):
        valid, errors = validate_event(planned.event)
        assert valid is not None, errors
        enriched.append(
            enrich_event(
                valid,
                tenant=TENANT,
                received_at=utcnow(),
                ip="127.0.0.1" if one_address else planned.client_ip,
                user_agent="bench",
                correlation_id=str(uuid.uuid4()),
            )
        )
    return enriched


def run_naive(stack: Platform, config: BenchConfig, *, events: int) -> E2EResult:
    from django.conf import settings

    from benchmarks.naive_tasks import TASK_NAME
    from cloudscale_project.celery import app

    prepared = _enriched_events(events, one_address=config.one_address)
    before = _stored_mark()
    with CpuMeter(stack) as cpu:
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

    def line(self) -> str:
        return (
            f"p50 {self.p50_ms:.1f} ms  p95 {self.p95_ms:.1f} ms  p99 {self.p99_ms:.1f} ms  "
            f"({self.requests / self.seconds:,.0f} req/s, {self.failures} not 202)"
        )


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
    with profiled(stack, profile, "single"), CpuMeter(stack) as cpu:
        summary = run_load(load, requests=plan_requests(traffic, total=len(traffic), batch=1), progress=False)
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


def _setup_django(stack: Platform) -> None:
    """This process reads the platform's database and publishes to its broker: same settings."""
    os.environ.clear()  # e.g. a CLOUDSCALE_QUEUE of the caller would point this process elsewhere
    os.environ.update(stack.env)
    import django

    django.setup()


def main() -> int:
    config = BenchConfig()
    load_before = os.getloadavg()[0]
    stack = Platform(config)
    _step(f"starting the platform on {stack.url} (state {stack.state})")
    started = time.monotonic()
    try:
        stack.start()
        _setup_django(stack)
        with MemorySampler(stack) as memory:
            _step("warm-up (forks, imports, first connections)")
            run_batched(stack, config, events=min(WARMUP_BATCHES * config.batch, config.events))
            # The SDK endpoint's warm-up on the demo tenant, whose windows the warm-up already filled.
            run_sdk(stack, config, events=min(WARMUP_BATCHES * config.batch, config.events), tenant=TENANT)
            run_naive(stack, config, events=min(WARMUP_NAIVE_EVENTS, config.naive_events))
            warm = replace(config, latency_requests=min(WARMUP_REQUESTS, config.latency_requests))
            run_latency(stack, warm, path="/bench/noop", seed=1)
            before = _stored_mark()
            warm_api = run_latency(stack, warm, path=None, seed=2)
            _wait_stored(after=before, events=warm_api.accepted, timeout=config.timeout, what="warm-up")

            _step(f"batched: {config.events:,} events in batches of {config.batch}, {config.clients} clients")
            batched = run_batched(stack, config, events=config.events, profile=config.profile_dir)
            _step(f"  {batched.per_second:,.0f} events/s; {batched.cpu.per_thousand(batched.events)}")
            _step(f"SDK: the same through /v1/batch (Segment format, gzip), {config.clients} clients")
            sdk = run_sdk(stack, config, events=config.events, tenant=SDK_TENANT)
            _step(f"  {sdk.per_second:,.0f} events/s; {sdk.cpu.per_thousand(sdk.events)}")
            _step(f"naive: {config.naive_events:,} events, one task and one store write each")
            naive = run_naive(stack, config, events=config.naive_events)
            _step(f"  {naive.per_second:,.0f} events/s; {naive.cpu.per_thousand(naive.events)}")
            _step(
                f"latency: {config.latency_requests:,} requests from {config.latency_clients} clients, each"
            )
            floor = run_latency(stack, config, path="/bench/noop", seed=3)
            api = run_latency(stack, config, path=None, seed=4, profile=config.profile_dir)
    except BaseException:
        _step("failed; stopping the platform")
        stack.stop(keep_state=True)
        raise
    _step("stopping the platform")
    stack.stop()

    ratio = batched.per_second / naive.per_second
    # The client's CPU is left out: the bench's own sender (gzip, message shape) is not the server's.
    server = ("api", "worker", "redis")
    sdk_cost_ratio = (sum(sdk.cpu.seconds[r] for r in server) / sdk.events) / (
        sum(batched.cpu.seconds[r] for r in server) / batched.events
    )
    cores = os.cpu_count() or 1
    threads = os.environ.get("GUNICORN_THREADS", "8")
    clients = config.latency_clients
    ceiling = batched.cpu.ceiling(batched.events, cores)
    addresses = "all 127.0.0.1" if config.one_address else "one per session (X-Forwarded-For)"
    rows = [
        ("machine", _machine()),
        ("stack", "embedded: SQLite + Redis (appendfsync always)"),
        ("", f"client addresses: {addresses}"),
        ("", f"gunicorn {config.api_workers} workers x {threads} threads"),
        ("", f"Celery prefork --autoscale {config.autoscale}, prefetch x2, task events off"),
        ("", ""),
        ("batched e2e (POST /api/events/batch)", f"{batched.per_second:,.0f} events/s"),
        ("", f"{batched.events:,} events, batches of {config.batch}, {config.clients} clients"),
        ("", f"all stored after {batched.seconds:.1f} s, accepted after {batched.ingest_seconds:.1f} s"),
        ("", batched.cpu.per_thousand(batched.events)),
        ("", batched.cpu.others()),
        ("", f"at that CPU cost {cores} idle cores would carry {ceiling:,.0f} events/s"),
        ("SDK e2e (POST /v1/batch, gzip)", f"{sdk.per_second:,.0f} events/s"),
        ("", f"{sdk.events:,} events, Segment batches of {config.batch}, {config.clients} clients"),
        ("", sdk.cpu.per_thousand(sdk.events)),
        ("", sdk.cpu.others()),
        ("SDK / batched, server CPU per event", f"{sdk_cost_ratio:.2f}x (API + worker + Redis)"),
        ("naive e2e (a task per event)", f"{naive.per_second:,.0f} events/s"),
        ("", f"{naive.events:,} events: all stored after {naive.seconds:.1f} s (published after "
             f"{naive.ingest_seconds:.1f} s)"),
        ("", naive.cpu.per_thousand(naive.events)),
        ("", naive.cpu.others()),
        ("ratio batched / naive", f"{ratio:.1f}x"),
        ("", ""),
        (f"POST /api/events, {clients} clients", api.line()),
        ("", api.cpu.per_thousand(api.requests, "requests")),
        ("", api.cpu.others()),
        (f"floor: trivial view, {clients} clients", floor.line()),
        ("", floor.cpu.per_thousand(floor.requests, "requests")),
        ("", floor.cpu.others()),
        ("", ""),
        ("peak memory, API (gunicorn)", memory.line("api")),
        ("peak memory, worker (Celery)", memory.line("worker")),
        ("", ""),
        ("bench wall time", f"{time.monotonic() - started:.0f} s"),
        ("load average (1 min)", f"{load_before:.1f} before, {os.getloadavg()[0]:.1f} after (ours included)"),
    ]  # fmt: skip
    print("CloudScale benchmark")
    print(_table(rows))
    result = f"e2e_events_per_s={batched.per_second:.0f} ratio_vs_naive={ratio:.1f} p99_ms={api.p99_ms:.1f}"
    print(f"RESULT {result}", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
