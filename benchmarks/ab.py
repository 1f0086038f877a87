"""Side-by-side runs of `benchmarks/run.py` for one lever: A and B alternate, then medians and B/A.

The machine is shared and noisy, so a lever is judged by runs that alternate in one session, never
by figures from different days. A and B differ by platform settings (`--a-env`/`--b-env`, set in
the platform's environment) or by code (`--a-tree`/`--b-tree`: another checkout, e.g. a
`git worktree` of the commit before the lever). Each run starts its own platform.

Examples:
  # the group-commit linger, single-event runs only, three rounds
  .venv/bin/python benchmarks/ab.py --phases latency,open --rounds 3 \\
      --a-env CLOUDSCALE_GROUP_COMMIT_LINGER_MS=8 --b-env CLOUDSCALE_GROUP_COMMIT_LINGER_MS=4
  # a code lever: the commit before it against this checkout, batched and one-address runs
  git worktree add /tmp/before HEAD~1
  CLOUDSCALE_BENCH_EVENTS=20000 .venv/bin/python benchmarks/ab.py --a-tree /tmp/before --phases batched,hot
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
from pathlib import Path
from typing import Any

if __package__:  # imported as benchmarks.ab
    from benchmarks import sidebyside
else:  # a script: the module beside this file
    import sidebyside  # type: ignore[no-redef]

RUN = Path(__file__).resolve().parent / "run.py"


def run_once(*, phases: str, env_pairs: str, tree: str) -> dict[str, Any]:
    """One bench run; its FIGURES."""
    env = {
        **os.environ,
        "CLOUDSCALE_BENCH_PHASES": phases,
        "CLOUDSCALE_BENCH_PLATFORM_ENV": env_pairs,
        "CLOUDSCALE_BENCH_TREE": tree,
        "CLOUDSCALE_BENCH_MAKE_RUN_EVENTS": "0",
    }
    done = subprocess.run([sys.executable, str(RUN)], env=env, capture_output=True, text=True, check=False)
    line = next((x for x in done.stdout.splitlines() if x.startswith("FIGURES ")), "")
    if done.returncode != 0 or not line:
        raise SystemExit(f"a bench run failed:\n{done.stderr[-3000:]}")
    figures: dict[str, Any] = json.loads(line.removeprefix("FIGURES "))
    return figures


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--phases", default="batched", help="runs of benchmarks/run.py (default: batched)")
    parser.add_argument("--rounds", type=int, default=2, help="runs of each side (default: 2)")
    parser.add_argument("--a-env", default="", help="KEY=VALUE,... for side A's platform")
    parser.add_argument("--b-env", default="", help="KEY=VALUE,... for side B's platform")
    parser.add_argument("--a-tree", default="", help="checkout side A's platform runs from (default: this)")
    parser.add_argument("--b-tree", default="", help="checkout side B's platform runs from (default: this)")
    args = parser.parse_args(argv)

    sides = {"A": (args.a_env, args.a_tree), "B": (args.b_env, args.b_tree)}
    results: dict[str, list[dict[str, Any]]] = {"A": [], "B": []}
    for round_ in range(1, args.rounds + 1):
        # A B, then B A: neither side always runs second (sidebyside.alternate says why).
        for side, (env_pairs, tree) in sidebyside.in_round_order(sides, round_):
            print(f"[ab] round {round_}/{args.rounds}: {side}", file=sys.stderr, flush=True)
            figures = run_once(phases=args.phases, env_pairs=env_pairs, tree=tree)
            # As it comes: a later run that fails must not take the earlier ones with it.
            print(f"[ab] {side}: {json.dumps(figures)}", file=sys.stderr, flush=True)
            results[side].append(figures)

    print(f"A: {args.a_env or '(defaults)'} {args.a_tree or '(this checkout)'}")
    print(f"B: {args.b_env or '(defaults)'} {args.b_tree or '(this checkout)'}")
    names = [k for k, v in results["A"][0].items() if isinstance(v, int | float)]
    width = max(len(n) for n in names)
    print(f"{'figure':<{width}}  {'A runs':<24}  {'B runs':<24}  {'B/A (medians)':>13}")
    for name in names:
        a = [r[name] for r in results["A"] if r.get(name) is not None]
        b = [r[name] for r in results["B"] if r.get(name) is not None]
        ratio = float("nan")
        if a and b and statistics.median(a):
            ratio = statistics.median(b) / statistics.median(a)
        print(f"{name:<{width}}  {' '.join(map(str, a)):<24}  {' '.join(map(str, b)):<24}  {ratio:>13.2f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
