"""The worker's drain alone: pool-like processes running the real task body into one database.

A batched `make bench` on SQLite ends when the worker has stored everything, and the drain is bound
by SQLite's one write lock ("Levers, eleventh round" in docs/benchmarks.md). Whole-platform runs
(`benchmarks/ab.py`) judge a lever on that drain through the API, the broker and their noise;
this runs only the drain: `--processes` forked processes (as Celery's prefork pool) each call
`batch_process_message` on `--messages` messages of 500 events of the bench's traffic, one
address per session, into one fresh SQLite file and the run's own embedded Redis (`always`, as
the platform), and the figure is events stored per second of wall time. It also prints the
processes' CPU per message, so a lever that only moves work in or out of the lock shows as a
change of rate at the same CPU.

With `--a-tree`/`--b-tree` it alternates two checkouts `--rounds` times and prints the medians
side by side with B/A.

Examples:
  .venv/bin/python benchmarks/drain.py
  .venv/bin/python benchmarks/drain.py --processes 1 --messages 60   # one process, the same events
  git worktree add /tmp/before HEAD~1
  .venv/bin/python benchmarks/drain.py --a-tree /tmp/before --b-tree . --rounds 5
"""

from __future__ import annotations

import argparse
import json
import os
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

BATCH = 500  # events per message: the bench's batches
FIGURES = ("events_per_s", "cpu_ms_per_message", "wall_s")


def measure(*, processes: int, messages: int) -> dict[str, float]:
    """One drain in this process's children (Django set up on a fresh SQLite database)."""
    import django
    from django.conf import settings
    from django.core.management import call_command

    django.setup()
    call_command("migrate", verbosity=0)
    from ops.embedded_redis import start_embedded_redis

    redis_server = start_embedded_redis(
        port=settings.EMBEDDED_REDIS_PORT,
        data_dir=settings.STATE_DIR / "redis",
        password=settings.EMBEDDED_REDIS_PASSWORD,
        fsync=settings.EMBEDDED_REDIS_FSYNC,
    )
    try:
        return _drain(processes=processes, messages=messages)
    finally:
        redis_server.terminate()
        redis_server.wait(timeout=10)


def _messages(count: int) -> list[list[dict[str, Any]]]:
    """`count` messages of the bench's traffic as the API enqueues them (enriched, JSON-decoded)."""
    import orjson

    from benchmarks.loadgen import TrafficGenerator
    from cloudscale_project.serialization import orjson_dumps
    from cloudscale_project.timeutil import isoformat_z, utcnow
    from events.enrichment import enrich_event
    from events.schemas import validate_event

    received_at = utcnow()
    sent_at = isoformat_z(received_at)
    enriched = []
    for planned in TrafficGenerator(seed=11).take(BATCH * count):
        valid, errors = validate_event({**planned.event, "sent_at": sent_at})
        assert valid is not None, errors
        enriched.append(
            enrich_event(
                valid,
                tenant="drain",
                received_at=received_at,
                ip=planned.client_ip,
                user_agent="drain",
                correlation_id="c-drain",
            )
        )
    events: list[dict[str, Any]] = orjson.loads(orjson_dumps(enriched))
    return [events[start : start + BATCH] for start in range(0, len(events), BATCH)]


def _drain(*, processes: int, messages: int) -> dict[str, float]:
    from django.db import connections

    from events.models import StoredEvent
    from events.pipeline import batch_process_message
    from tenants.services import tenant_create

    tenant_create(slug="drain", name="Drain")
    batches = _messages(processes * messages)
    connections.close_all()  # each child opens its own, as a pool process does
    read_end, write_end = os.pipe()
    started = time.perf_counter()
    children = []
    for index in range(processes):
        pid = os.fork()
        if pid == 0:  # pragma: no cover - a child reports through the pipe and leaves at once
            os.close(read_end)
            code = 1
            try:
                cpu = time.process_time()
                for events in batches[index::processes]:
                    kwargs = {"tenant": "drain", "events": events, "correlation_id": "c"}
                    batch_process_message(args=(), kwargs=kwargs, attempt=1)
                os.write(write_end, f"{time.process_time() - cpu}\n".encode())
                code = 0
            finally:
                os._exit(code)
        children.append(pid)
    os.close(write_end)
    failed = [pid for pid in children if os.waitpid(pid, 0)[1] != 0]
    wall = time.perf_counter() - started
    with os.fdopen(read_end) as reports:
        cpu_total = sum(float(line) for line in reports.read().split())
    stored = StoredEvent.objects.count()
    if failed or stored != len(batches) * BATCH:
        raise SystemExit(f"the drain stored {stored} of {len(batches) * BATCH} events ({len(failed)} failed)")
    return {
        "events_per_s": round(stored / wall, 1),
        "cpu_ms_per_message": round(cpu_total / len(batches) * 1000, 2),
        "wall_s": round(wall, 3),
    }


def _free_port() -> int:
    # A copy of hotpath.py's (and tests.netutil's): the script runs from a checkout whose
    # `benchmarks` is not importable as a package, and the child imports the tree under
    # measurement through PYTHONPATH, which a shared module here would stand ahead of.
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port: int = probe.getsockname()[1]
        return port


def run_tree(tree: str, *, processes: int, messages: int) -> dict[str, float]:
    """One drain in a child process running `tree`'s code on a database of its own."""
    with tempfile.TemporaryDirectory(prefix="cloudscale-drain-") as state:
        env = {
            **{k: v for k, v in os.environ.items() if not k.startswith(("CLOUDSCALE_", "DATABASE_URL"))},
            "DJANGO_SETTINGS_MODULE": "cloudscale_project.settings",
            "CLOUDSCALE_STATE_DIR": state,
            "CLOUDSCALE_EMBEDDED_REDIS_PORT": str(_free_port()),
            "PYTHONPATH": tree,
        }
        done = subprocess.run(
            [
                sys.executable,
                str(Path(__file__).resolve()),
                "--measure",
                "--processes",
                str(processes),
                "--messages",
                str(messages),
            ],
            cwd=tree,
            env=env,
            capture_output=True,
            text=True,
            check=False,
        )
    if done.returncode != 0:
        raise SystemExit(f"drain run in {tree} failed:\n{done.stderr[-3000:]}")
    figures: dict[str, float] = json.loads(done.stdout.strip().splitlines()[-1])
    return figures


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--a-tree", default="", help="checkout of side A (default: only measure this one)")
    parser.add_argument("--b-tree", default=".", help="checkout of side B (default: this one)")
    parser.add_argument("--rounds", type=int, default=3, help="runs of each side (default: 3)")
    parser.add_argument(
        "--processes", type=int, default=2, help="processes draining side by side (default: 2, as the bench)"
    )
    parser.add_argument(
        "--messages", type=int, default=30, help=f"messages of {BATCH} events per process (default: 30)"
    )
    parser.add_argument("--measure", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.processes < 1 or args.messages < 1:
        parser.error("--processes and --messages must be at least 1")
    if args.measure:
        print(json.dumps(measure(processes=args.processes, messages=args.messages)))
        return 0
    trees = {"B": str(Path(args.b_tree).resolve())}
    if args.a_tree:
        trees = {"A": str(Path(args.a_tree).resolve()), **trees}
    results: dict[str, list[dict[str, float]]] = {side: [] for side in trees}
    for round_ in range(1, args.rounds + 1):
        for side, tree in trees.items():
            figures = run_tree(tree, processes=args.processes, messages=args.messages)
            report = f"[drain] round {round_}/{args.rounds} {side}: {json.dumps(figures)}"
            print(report, file=sys.stderr, flush=True)
            results[side].append(figures)
    for side, tree in trees.items():
        print(f"{side}: {tree}")
    print(f"{args.processes} processes x {args.messages} messages of {BATCH} events, one SQLite file")
    print(
        f"{'figure':<20}"
        + "".join(f"{side + ' (median)':>14}" for side in trees)
        + ("     B/A" if "A" in trees else "")
    )
    for name in FIGURES:
        medians = {side: statistics.median(r[name] for r in results[side]) for side in trees}
        ratio = f"{medians['B'] / medians['A']:8.2f}" if "A" in trees and medians["A"] else ""
        print(f"{name:<20}" + "".join(f"{medians[side]:>14.2f}" for side in trees) + ratio)
    return 0


if __name__ == "__main__":
    sys.exit(main())
