"""What one rate-limit check costs the shared-state server and its caller: two checkouts side by side.

Every request the API admits runs the rate limiter's Lua script (`events/throttling.py`) once, on
the same `valkey-server` as the rest of the shared state. This starts that server as `make run`
does (the embedded one, `appendfsync always`), has `--threads` clients run the script of each
checkout `--calls` times each, the sides alternating and swapping places every round, and prints
each side's medians per call:

  server     the server process's CPU (all its threads, `/proc/<pid>/task/*/schedstat`): the script, the
             append-only file's writes and syncs, the sockets
  script     the script's own run time as the server counts it (`INFO commandstats`, evalsha)
  caller     this process's CPU: redis-py packing the call and reading the reply

The arguments are the bench's (`benchmarks/settings.py`: limits no request reaches, the fair share
on) with a cached key lookup's version, so every call passes every limit and writes what an
admitted request writes. Each call decides one check, in the layout of its checkout's script (a
script that decides several checks a call takes their count and sizes first); what sharing a call
saves is the batching's, measured apart (docs/benchmarks.md, "Levers, thirty-first round"). The
script is read from each checkout's source (the `_SCRIPT` literal), so a checkout needs no
installing; both run on this checkout's redis-py.

Examples:
  .venv/bin/python benchmarks/ratelimit_cost.py
  git worktree add /tmp/before HEAD~1
  .venv/bin/python benchmarks/ratelimit_cost.py --a-tree /tmp/before --rounds 8
"""

from __future__ import annotations

import argparse
import re
import secrets
import statistics
import sys
import tempfile
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import redis

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from ops.embedded_redis import start_embedded_redis  # noqa: E402 - after the path is set
from tests.netutil import free_port  # noqa: E402

_VERSION_KEY = "cloudscale:tenants:version"
_VERSION = "42"
# ARGV of check_rate_limits for an admitted request of an active tenant under the bench's limits.
_ARGS = ["1000000000", "1000000000.0", "1000000000", "60", "0", "1", "500000000", "800000000.0"]
_ARGS += ["0.0", "50", "global", _VERSION]


def script_of(tree: Path) -> str:
    """The rate limiter's Lua source in a checkout."""
    source = (tree / "events" / "throttling.py").read_text()
    match = re.search(r'^_SCRIPT = """(.*?)"""', source, re.S | re.M)
    if match is None:
        raise SystemExit(f"no _SCRIPT literal in {tree}/events/throttling.py")
    return match.group(1)


# A script that decides several checks a call (`_Batcher` in events/throttling.py) takes the number
# of checks, then each check's key and argument counts before its arguments; one before it, one
# check's arguments alone.
_DECIDES_SEVERAL = "local function decide(KEYS, ARGV, now)"


def call_args(source: str, keys: list[str]) -> list[str | int]:
    """The ARGV of one call that decides one check with `keys`, in the script's own layout."""
    if _DECIDES_SEVERAL in source:
        return [1, len(keys), len(_ARGS), *_ARGS]
    return list(_ARGS)


def decision_of(source: str, reply: list[Any]) -> list[Any]:
    """The one check's decision in a call's reply."""
    return list(reply[0]) if _DECIDES_SEVERAL in source else list(reply)


@dataclass(frozen=True)
class Reading:
    server_us: float
    script_us: float
    caller_us: float
    calls_per_s: float


def _server_cpu_s(pid: int) -> float:
    """CPU time of all the server's threads, in nanoseconds' precision (the first field of each
    thread's schedstat): `/proc/<pid>/stat` counts in ticks of 10 ms, too coarse for a short round."""
    tasks = Path(f"/proc/{pid}/task").iterdir()
    return sum(int((task / "schedstat").read_text().split()[0]) for task in tasks) / 1e9


def _evalsha_usec(client: redis.Redis) -> tuple[int, int]:
    stats = client.info("commandstats").get("cmdstat_evalsha", {"usec": 0, "calls": 0})
    return int(stats["usec"]), int(stats["calls"])


def measure(
    *, client_factory: Callable[[], redis.Redis], pid: int, source: str, side: str, threads: int, calls: int
) -> Reading:
    """`threads` clients, each with its own connection and address, run the script `calls` times."""
    admin = client_factory()
    script = admin.register_script(source)
    refused: list[object] = []

    def work(index: int) -> None:
        client = client_factory()
        keys = [f"rl:ip:{side}:10.0.0.{index}", "rl:global", "rl:tenant:demo", "rl:share:demo"]
        keys += ["rl:reads:demo", _VERSION_KEY]
        args = call_args(source, keys)
        for _ in range(calls):
            decision = decision_of(source, script(keys=keys, args=args, client=client))
            if decision[0] != 1:
                refused.append(decision)
                return

    workers = [threading.Thread(target=work, args=(index,)) for index in range(threads)]
    usec_before, calls_before = _evalsha_usec(admin)
    server_before, caller_before, wall_before = _server_cpu_s(pid), time.process_time(), time.perf_counter()
    for worker in workers:
        worker.start()
    for worker in workers:
        worker.join()
    wall = time.perf_counter() - wall_before
    if refused:  # every call must write what an admitted request writes, or the figure is another's
        raise RuntimeError(f"the script refused a call: {refused[0]!r}")
    server, caller = _server_cpu_s(pid) - server_before, time.process_time() - caller_before
    usec_after, calls_after = _evalsha_usec(admin)
    total = threads * calls
    return Reading(
        server_us=server / total * 1e6,
        script_us=(usec_after - usec_before) / max(1, calls_after - calls_before),
        caller_us=caller / total * 1e6,
        calls_per_s=total / wall,
    )


def compare(
    *, sources: dict[str, str], threads: int, calls: int, rounds: int, fsync: str = "always"
) -> dict[str, list[Reading]]:
    """Each side `rounds` times on one server, alternating, after one warm-up call each."""
    password = secrets.token_hex(12)
    port = free_port()
    with tempfile.TemporaryDirectory(prefix="cloudscale-ratelimit-") as data:
        process = start_embedded_redis(port=port, data_dir=Path(data), password=password, fsync=fsync)
        try:

            def client_factory() -> redis.Redis:
                return redis.Redis(host="127.0.0.1", port=port, password=password)

            client_factory().set(_VERSION_KEY, _VERSION)
            readings: dict[str, list[Reading]] = {side: [] for side in sources}

            def run(side: str, count: int) -> Reading:
                return measure(
                    client_factory=client_factory,
                    pid=process.pid,
                    source=sources[side],
                    side=side,
                    threads=threads,
                    calls=count,
                )

            for side in sources:
                run(side, 1)  # warm-up: the script loaded, each connection made
            order = list(sources)
            for round_index in range(rounds):
                for side in order if round_index % 2 == 0 else order[::-1]:
                    readings[side].append(run(side, calls))
            return readings
        finally:
            process.terminate()
            process.wait(timeout=10)


def median(readings: list[Reading], name: str) -> float:
    return statistics.median(getattr(reading, name) for reading in readings)


def report(readings: dict[str, list[Reading]]) -> list[str]:
    names = ("server_us", "script_us", "caller_us", "calls_per_s")
    lines = [
        f"{'side':6} {'server µs':>10} {'script µs':>10} {'caller µs':>10} {'calls/s':>9}   server by round"
    ]
    for side, side_readings in readings.items():
        medians = [median(side_readings, name) for name in names]
        rounds = ", ".join(f"{reading.server_us:.1f}" for reading in side_readings)
        lines.append(
            f"{side:6} {medians[0]:10.1f} {medians[1]:10.1f} {medians[2]:10.1f} {medians[3]:9.0f}   {rounds}"
        )
    if set(readings) == {"A", "B"}:
        ratios = [median(readings["B"], name) / median(readings["A"], name) for name in names]
        lines.append(f"{'B/A':6} {ratios[0]:10.2f} {ratios[1]:10.2f} {ratios[2]:10.2f} {ratios[3]:9.2f}")
    return lines


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description=__doc__.split("\n\n", 1)[1] if __doc__ else None,
        formatter_class=argparse.RawDescriptionHelpFormatter,
        usage="%(prog)s [-h] [--a-tree A_TREE] [--b-tree B_TREE] [options]",
    )
    parser.add_argument("--a-tree", type=Path, help="checkout of side A (default: only measure side B)")
    parser.add_argument("--b-tree", type=Path, default=ROOT, help="checkout of side B (default: this one)")
    parser.add_argument("--threads", type=int, default=16, help="concurrent clients (default: 16)")
    parser.add_argument("--calls", type=int, default=400, help="calls per client and round (default: 400)")
    parser.add_argument("--rounds", type=int, default=6, help="rounds of each side (default: 6)")
    options = parser.parse_args(argv)
    sources = {"B": script_of(options.b_tree)}
    if options.a_tree is not None:
        sources = {"A": script_of(options.a_tree), **sources}
    print(
        f"rate-limit script, {options.threads} clients x {options.calls} calls, "
        f"{options.rounds} rounds a side, medians per call",
        flush=True,
    )
    readings = compare(sources=sources, threads=options.threads, calls=options.calls, rounds=options.rounds)
    print("\n".join(report(readings)))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
