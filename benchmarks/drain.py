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
  .venv/bin/python benchmarks/drain.py --messages 25 --events 1000   # the same events, twice a message
  git worktree add /tmp/before HEAD~1
  .venv/bin/python benchmarks/drain.py --a-tree /tmp/before --b-tree . --rounds 5
"""

from __future__ import annotations

import argparse
import gc
import json
import os
import sys
import time
from typing import Any

if __package__:  # imported as benchmarks.drain (the tests)
    from benchmarks import sidebyside
else:  # a script, here or in a child on another tree: the module beside this file
    import sidebyside  # type: ignore[no-redef]

BATCH = 500  # events per message: the bench's batches (`--events` for others)
FIGURES = ("events_per_s", "cpu_ms_per_message", "wall_s")


def measure(*, processes: int, messages: int, events: int = BATCH) -> dict[str, float]:
    """One drain in this process's children (Django set up on a fresh SQLite database)."""
    with sidebyside.fresh_stack():
        return _drain(processes=processes, messages=messages, size=events)


def _messages(count: int, size: int = BATCH) -> list[list[dict[str, Any]]]:
    """`count` messages of `size` events of the bench's traffic as the API enqueues them (enriched,
    JSON-decoded)."""
    import orjson

    from benchmarks.loadgen import TrafficGenerator
    from cloudscale_project.serialization import orjson_dumps
    from cloudscale_project.timeutil import isoformat_z, utcnow
    from events.enrichment import enrich_event
    from events.schemas import validate_event

    received_at = utcnow()
    sent_at = isoformat_z(received_at)
    enriched = []
    for planned in TrafficGenerator(seed=11).take(size * count):
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
    return [events[start : start + size] for start in range(0, len(events), size)]


def _drain(*, processes: int, messages: int, size: int = BATCH) -> dict[str, float]:
    from django.db import connections

    from events.models import StoredEvent
    from events.pipeline import batch_process_message
    from tenants.services import tenant_create

    tenant_create(slug="drain", name="Drain")
    batches = _messages(processes * messages, size)
    connections.close_all()  # each child opens its own, as a pool process does
    # A pool process holds the message it runs, not every message of the drain: frozen, the batches
    # made here are out of the children's collector's sight (its full collections walked them),
    # and a collection does not write to the pages the children share with this process.
    gc.collect()
    gc.freeze()
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
    gc.unfreeze()  # this process goes on (a test may have called this)
    os.close(write_end)
    failed = [pid for pid in children if os.waitpid(pid, 0)[1] != 0]
    wall = time.perf_counter() - started
    with os.fdopen(read_end) as reports:
        cpu_total = sum(float(line) for line in reports.read().split())
    stored = StoredEvent.objects.count()
    if failed or stored != len(batches) * size:
        raise SystemExit(f"the drain stored {stored} of {len(batches) * size} events ({len(failed)} failed)")
    return {
        "events_per_s": round(stored / wall, 1),
        "cpu_ms_per_message": round(cpu_total / len(batches) * 1000, 2),
        "wall_s": round(wall, 3),
    }


def run_tree(tree: str, *, processes: int, messages: int, events: int = BATCH) -> dict[str, float]:
    """One drain in a child process running `tree`'s code on a database of its own."""
    arguments = ["--processes", str(processes), "--messages", str(messages)]
    if events != BATCH:  # a checkout older than the option still runs the default
        arguments += ["--events", str(events)]
    figures: dict[str, float] = sidebyside.measure_in_tree(__file__, tree, arguments)
    return figures


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    sidebyside.add_tree_arguments(parser, rounds=3)
    parser.add_argument(
        "--processes", type=int, default=2, help="processes draining side by side (default: 2, as the bench)"
    )
    parser.add_argument("--messages", type=int, default=30, help="messages per process (default: 30)")
    parser.add_argument(
        "--events",
        type=int,
        default=BATCH,
        help=f"events per message (default: {BATCH}, the bench's batches)",
    )
    args = parser.parse_args(argv)
    if args.processes < 1 or args.messages < 1 or args.events < 1:
        parser.error("--processes, --messages and --events must be at least 1")
    if args.measure:
        print(json.dumps(measure(processes=args.processes, messages=args.messages, events=args.events)))
        return 0
    trees = sidebyside.trees_of(args)
    results = sidebyside.alternate(
        trees,
        rounds=args.rounds,
        measure=lambda tree: run_tree(
            tree, processes=args.processes, messages=args.messages, events=args.events
        ),
        tag="drain",
    )
    caption = (
        f"{args.processes} processes x {args.messages} messages of {args.events} events, one SQLite file"
    )
    # Three decimals: a fast machine drains the toy sizes in tens of milliseconds (wall_s is to 1 ms).
    sidebyside.print_medians(trees, results, FIGURES, caption=caption, heading="figure", digits=3)
    return 0


if __name__ == "__main__":
    sys.exit(main())
