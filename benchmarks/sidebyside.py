"""Two checkouts measured side by side: what `drain.py` and `hotpath.py` share (and `ab.py` the
order its sides run in).

Each of those scripts measures in a child process that runs the script's own `--measure` mode with
another checkout's code (`PYTHONPATH`, working folder) on a state folder of its own, alternates
the two checkouts' runs round by round, and prints the medians with B/A.

A script imports it as `sidebyside`, from the script's own folder (which Python puts first on
`sys.path`), and the tests, which import the scripts as `benchmarks.*`, as `benchmarks.sidebyside`.
Not through `benchmarks` in a child: there that package is the other tree's, which may predate this
module, and putting this checkout on `sys.path` ahead of it would measure this checkout's app code.
Standard library only, and Django imported only inside a child.
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
from collections.abc import Callable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Any

Figures = dict[str, float]


def free_port() -> int:
    """A loopback port free right now (tests/netutil.py has the same for the tests)."""
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port: int = probe.getsockname()[1]
        return port


def add_tree_arguments(parser: argparse.ArgumentParser, *, rounds: int) -> None:
    """`--a-tree`, `--b-tree`, `--rounds` and the hidden `--measure` of a side-by-side script."""
    parser.add_argument("--a-tree", default="", help="checkout of side A (default: only measure this one)")
    parser.add_argument("--b-tree", default=".", help="checkout of side B (default: this one)")
    parser.add_argument("--rounds", type=int, default=rounds, help=f"runs of each side (default: {rounds})")
    parser.add_argument("--measure", action="store_true", help=argparse.SUPPRESS)


def trees_of(args: argparse.Namespace) -> dict[str, str]:
    """The sides to measure, A first when there is one: {"A": path, "B": path}."""
    trees = {"B": str(Path(args.b_tree).resolve())}
    if args.a_tree:
        trees = {"A": str(Path(args.a_tree).resolve()), **trees}
    return trees


def measure_in_tree(
    script: str, tree: str, arguments: Sequence[str], *, env: Mapping[str, str] | None = None
) -> Any:
    """Run `script --measure *arguments` with `tree`'s code on a fresh state folder and embedded
    Redis port; the JSON its last line of output printed. Exits with the child's error output when
    the run fails, naming the tree."""
    name = Path(script).stem
    with tempfile.TemporaryDirectory(prefix=f"cloudscale-{name}-") as state:
        child_env = {
            **{k: v for k, v in os.environ.items() if not k.startswith(("CLOUDSCALE_", "DATABASE_URL"))},
            "DJANGO_SETTINGS_MODULE": "cloudscale_project.settings",
            "CLOUDSCALE_STATE_DIR": state,
            "CLOUDSCALE_EMBEDDED_REDIS_PORT": str(free_port()),
            **(env or {}),
            "PYTHONPATH": tree,
        }
        done = subprocess.run(
            [sys.executable, str(Path(script).resolve()), "--measure", *arguments],
            cwd=tree,
            env=child_env,
            capture_output=True,
            text=True,
            check=False,
        )
    if done.returncode != 0:
        raise SystemExit(f"{name} run in {tree} failed:\n{done.stderr[-3000:]}")
    return json.loads(done.stdout.strip().splitlines()[-1])


def alternate(
    trees: Mapping[str, str], *, rounds: int, measure: Callable[[str], Figures], tag: str
) -> dict[str, list[Figures]]:
    """Each side's figures, round by round, so both meet the same noise. Every run's figures go to
    stderr as they come.

    The sides swap places every round (A B, B A, A B …), so that whatever running second does to a
    run falls on both: with A always first, one checkout against itself read B/A 1.03, and one
    lever read 1.05 and then, with the checkouts swapped, 0.93 (docs/benchmarks.md, "Levers,
    twentieth round")."""
    results: dict[str, list[Figures]] = {side: [] for side in trees}
    for round_ in range(1, rounds + 1):
        for side, tree in in_round_order(trees, round_):
            figures = measure(tree)
            report = f"[{tag}] round {round_}/{rounds} {side}: {json.dumps(figures)}"
            print(report, file=sys.stderr, flush=True)
            results[side].append(figures)
    return results


def in_round_order(sides: Mapping[str, Any], round_: int) -> list[tuple[str, Any]]:
    """The sides in the order round `round_` (from 1) runs them: as given in odd rounds, reversed
    in even ones."""
    order = list(sides.items())
    return order if round_ % 2 else order[::-1]


def print_medians(
    trees: Mapping[str, str],
    results: Mapping[str, list[Figures]],
    names: Sequence[str],
    *,
    caption: str,
    heading: str,
    width: int = 20,
    digits: int = 2,
) -> None:
    """The sides' paths, a caption, then one row per figure: each side's median and, with two
    sides, B/A."""
    for side, tree in trees.items():
        print(f"{side}: {tree}")
    print(caption)
    two = "A" in trees
    columns = "".join(f"{side + ' (median)':>14}" for side in trees)
    print(f"{heading:<{width}}" + columns + ("     B/A" if two else ""))
    for name in names:
        medians = {side: statistics.median(r[name] for r in results[side]) for side in trees}
        ratio = f"{medians['B'] / medians['A']:8.2f}" if two and medians["A"] else ""
        print(f"{name:<{width}}" + "".join(f"{medians[side]:>14.{digits}f}" for side in trees) + ratio)


@contextmanager
def fresh_stack() -> Iterator[None]:
    """In a `--measure` child: Django set up on its fresh SQLite database, migrated, and the run's own
    embedded Redis running (`appendfsync` as the settings say) until the block ends."""
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
        yield
    finally:
        redis_server.terminate()
        redis_server.wait(timeout=10)
