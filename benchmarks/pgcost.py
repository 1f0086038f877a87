"""What a small message costs PostgreSQL, statement by statement: where the PostgreSQL stack's extra
CPU per single event goes (docs/benchmarks.md, "Levers, thirtieth round").

Single events reach the worker a few to a message after the API's group commit (7-8 under the
bench's 50 clients). This runs the task body (`batch_process_message`) over the bench's traffic in
messages of `--message-size` events, on a PostgreSQL database of its own, and times each statement
the worker sends: the server's CPU (its backend process's `/proc/<pid>/schedstat`, nanoseconds) and
the worker's (this thread's CPU time around the statement: building nothing, binding and reading
the reply). Commits, `BEGIN` and what the server does between statements are not statements
Django's execute wrappers see: they are the `commits+rest` row, the whole message's server CPU less
the statements'. Linux only (`/proc`); the server must be on this machine.

Figures are per message, in µs, after one warm-up pass over a tenth of the messages. The fraud
step's windows run on an embedded Redis of the run's own; its CPU is not counted here.

Examples:
  .venv/bin/python benchmarks/pgcost.py
  .venv/bin/python benchmarks/pgcost.py --message-size 500 --events 20000   # batched messages
  CLOUDSCALE_BENCH_POSTGRES_URL=postgres://me@127.0.0.1:5433 .venv/bin/python benchmarks/pgcost.py
"""

from __future__ import annotations

import argparse
import json
import os
import re
import sys
import time
import uuid
from collections import defaultdict
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

if __package__:  # imported as benchmarks.pgcost (the tests)
    from benchmarks import sidebyside
else:  # a script: the module beside this file
    import sidebyside  # type: ignore[no-redef]

# The server the bench's postgres stack uses (benchmarks/run.py), unless the environment names another.
POSTGRES_URL = os.environ.get("CLOUDSCALE_BENCH_POSTGRES_URL", "postgres://postgres@127.0.0.1:5432")
COMMITS_ROW = "commits+rest"
MESSAGE_ROW = "message"
_SAVEPOINT = re.compile(r"^\s*(SAVEPOINT|RELEASE|ROLLBACK TO)\b", re.IGNORECASE)
_TABLE = re.compile(r'\b(?:INTO|FROM|UPDATE)\s+"?(\w+)"?', re.IGNORECASE)


def statement_label(sql: str) -> str:
    """One word for a statement: its verb and first table (`INSERT:events_storedevent`)."""
    if _SAVEPOINT.match(sql):
        return "savepoints"
    verb = sql.split(None, 1)[0].upper() if sql.strip() else "?"
    table = _TABLE.search(sql)
    return f"{verb}:{table.group(1)}" if table else verb


def _server_ns(pid: int) -> int:
    """CPU nanoseconds the process has run (the first field of schedstat)."""
    return int(Path(f"/proc/{pid}/schedstat").read_text().split()[0])


@contextmanager
def _database(name: str) -> Iterator[str]:
    """A database of the run's own on the server; dropped afterwards, whatever happened."""
    import psycopg

    with psycopg.connect(f"{POSTGRES_URL}/postgres", autocommit=True) as conn:
        conn.execute(f'CREATE DATABASE "{name}"')
    try:
        yield f"{POSTGRES_URL}/{name}"
    finally:
        with psycopg.connect(f"{POSTGRES_URL}/postgres", autocommit=True) as conn:
            conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


def _messages(events: int, size: int) -> list[dict[str, Any]]:
    """The bench's traffic (one address per session), validated and enriched as the API does."""
    import orjson

    from benchmarks.loadgen import enriched_events

    enriched = enriched_events(events, tenant="pgcost", user_agent="pgcost")
    wire: list[dict[str, Any]] = orjson.loads(orjson.dumps(enriched))  # as a worker decodes them
    return [
        {"tenant": "pgcost", "events": wire[start : start + size], "correlation_id": "c-pgcost"}
        for start in range(0, len(wire), size)
    ]


def measure(events: int, size: int) -> dict[str, Any]:
    """In the `--measure` child: every statement's server and worker CPU per message."""
    with sidebyside.fresh_stack():
        import logging

        from django.db import connection

        from events.pipeline import batch_process_message
        from tenants.services import tenant_create

        logging.disable(logging.WARNING)  # the fraud alerts' lines are not the figure
        tenant_create(slug="pgcost", name="pgcost")
        messages = _messages(events, size)
        for message in messages[: max(1, len(messages) // 10)]:  # warm-up: caches, first plans
            batch_process_message(args=(), kwargs={**message, "events": _fresh(message)}, attempt=1)
        with connection.cursor() as cursor:
            cursor.execute("SELECT pg_backend_pid()")
            backend = int(cursor.fetchone()[0])
        spent: dict[str, list[float]] = defaultdict(lambda: [0.0, 0.0, 0.0])

        def timed(execute: Callable[..., Any], sql: str, params: Any, many: bool, context: Any) -> Any:
            server, worker = _server_ns(backend), time.thread_time_ns()
            try:
                return execute(sql, params, many, context)
            finally:
                row = spent[statement_label(sql)]
                row[0] += _server_ns(backend) - server
                row[1] += time.thread_time_ns() - worker
                row[2] += 1

        server, worker = _server_ns(backend), time.thread_time_ns()
        with connection.execute_wrapper(timed):
            for message in messages:
                batch_process_message(args=(), kwargs=message, attempt=1)
        whole_server, whole_worker = _server_ns(backend) - server, time.thread_time_ns() - worker
    count = len(messages)
    rows = {label: [s / count / 1e3, w / count / 1e3, n / count] for label, (s, w, n) in spent.items()}
    rows[COMMITS_ROW] = [
        (whole_server - sum(s for s, _, _ in spent.values())) / count / 1e3,
        0.0,  # the worker's side of a commit is in the whole message's figure only
        0.0,
    ]
    rows[MESSAGE_ROW] = [whole_server / count / 1e3, whole_worker / count / 1e3, 1.0]
    return {"messages": count, "size": size, "rows": rows}


def _fresh(message: dict[str, Any]) -> list[dict[str, Any]]:
    """The message's events under new ids, so the warm-up stores nothing the measured pass will."""
    return [{**event, "event_id": str(uuid.uuid4())} for event in message["events"]]


def print_table(result: dict[str, Any]) -> None:
    rows: dict[str, list[float]] = result["rows"]
    print(
        f"PostgreSQL CPU per message of {result['size']} events "
        f"({result['messages']} messages of the bench's traffic), µs"
    )
    print(f"{'statement':<36} {'per message':>11} {'server':>9} {'worker':>9}")
    statements = sorted((k for k in rows if k not in (COMMITS_ROW, MESSAGE_ROW)), key=lambda k: -rows[k][0])
    for label in (*statements, COMMITS_ROW, MESSAGE_ROW):
        server, worker, runs = rows[label]
        shown_runs = "-" if label == COMMITS_ROW else f"{runs:.2f}"
        shown_worker = "-" if label == COMMITS_ROW else f"{worker:.1f}"
        print(f"{label:<36} {shown_runs:>11} {server:>9.1f} {shown_worker:>9}")
    print(
        f"({COMMITS_ROW}: BEGIN, COMMIT and the server's work between statements; {MESSAGE_ROW}: all of it)"
    )


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--message-size", type=int, default=7, help="events per message (default: 7)")
    parser.add_argument("--events", type=int, default=4200, help="events measured (default: 4200)")
    parser.add_argument("--measure", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.message_size < 1 or args.events < args.message_size:
        parser.error("--events must be at least --message-size, and both positive")
    if args.measure:
        print(json.dumps(measure(args.events, args.message_size)))
        return 0
    with _database(f"cloudscale_pgcost_{os.getpid()}") as url:
        result = sidebyside.measure_in_tree(
            __file__, str(Path(__file__).resolve().parent.parent),
            ["--events", str(args.events), "--message-size", str(args.message_size)],
            env={"DATABASE_URL": url},
        )  # fmt: skip
    print_table(result)
    return 0


if __name__ == "__main__":
    sys.exit(main())
