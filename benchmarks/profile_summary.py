"""Where the time goes: a text summary of the py-spy profiles `make bench` records on request.

Example:
    CLOUDSCALE_BENCH_PROFILE=/tmp/prof .venv/bin/python benchmarks/run.py
    .venv/bin/python benchmarks/profile_summary.py /tmp/prof/worker.folded /tmp/prof/api.folded

py-spy samples only threads that are running (not waiting on a socket or a lock), so the shares
are shares of CPU time spent in those processes, by the pipeline's steps and by the hottest
functions (self time: the sampled frame itself; inclusive: the frame anywhere on the stack).
"""

from __future__ import annotations

import argparse
import re
import sys
from collections import Counter
from pathlib import Path

# (label, frame text): a step's share is the share of samples with such a frame on the stack.
STEPS: dict[str, list[tuple[str, str | None]]] = {
    "worker": [
        ("events.process_batch task, all of it", "process_batch (events/tasks.py"),
        ("  decode", "decode_batch (events/pipeline.py"),
        # Begun before the store and finished after it: any frame of the fraud step's module.
        ("  fraud rules (fraud/services.py: begin, finish)", " (fraud/services.py"),
        ("    Redis windows script (send, read the hits)", " (fraud/windows.py"),
        ("  scoring (score_apply_batch)", "score_apply_batch (scoring/services.py"),
        ("  event store write (write_many)", "write_many (events/stores/orm.py"),
        ("  cart abandonment step (cart_events_record)", "cart_events_record (carts/services.py"),
        ("  metrics (platform_incr_many)", "platform_incr_many (cloudscale_project/metrics.py"),
        ("  tracing spans", "start_span (cloudscale_project/observability.py"),
        ("Celery: receive, decode message, ack (outside the task)", None),
        ("logging (any)", "handle (logging/__init__.py"),
    ],
    "api": [
        ("gunicorn request handling, all of it", "handle_request (gunicorn/workers/gthread.py"),
        ("  Django middleware and view dispatch", "get_response (django/core/handlers/base.py"),
        ("    rate-limit middleware", "__call__ (events/middleware.py"),
        ("    API key authentication", "authenticate (tenants/authentication.py"),
        ("    ingest_events (the service)", "ingest_events (events/ingestion.py"),
        ("      validation (pydantic)", "validate_event (events/schemas.py"),
        ("      enrichment", "enrich_event (events/enrichment.py"),
        ("      group commit: a request's wait and its leader's flush", "submit (events/publishing.py"),
        ("      dedup reserve (Redis, per group)", "reserve_event_id_lists (events/dedup.py"),
        ("      publish (kombu, Redis LPUSH)", "publish_events (events/publishing.py"),
        ("      dedup confirm + ledger count (Redis)", "ledger_commit_all (events/ledger.py"),
        ("      ledger + metrics", "_count (events/ingestion.py"),
        ("    request body parse (orjson)", "parse_json_body (events/ingestion.py"),
        ("    response rendering (DRF JSONRenderer)", "render (rest_framework/renderers.py"),
        ("logging (any)", "handle (logging/__init__.py"),
    ],
}
_FRAME = re.compile(r"^(?P<func>.+?) \((?P<where>[^()]*)\)$")
OUR_PACKAGES = ("events/", "fraud/", "scoring/", "ops/", "cloudscale_project/", "benchmarks/")


def _stacks(path: Path) -> list[tuple[list[str], int]]:
    stacks = []
    for line in path.read_text().splitlines():
        frames, _, count = line.rpartition(" ")
        if not frames or not count.isdigit():
            continue
        parts = [f for f in frames.split(";") if not f.startswith("process ")]
        stacks.append((parts, int(count)))
    return stacks


def summarize(path: Path, role: str, *, top: int = 18) -> str:
    stacks = _stacks(path)
    total = sum(n for _, n in stacks) or 1
    lines = [f"== {role}: {path} ({total} samples)"]
    for label, prefix in STEPS.get(role, []):
        if prefix is None:  # the worker's time outside the task body
            share = sum(n for frames, n in stacks if not any("process_batch (events/" in f for f in frames))
        else:
            share = sum(n for frames, n in stacks if any(prefix in f for f in frames))
        lines.append(f"  {label:<58} {100 * share / total:5.1f} %")
    self_time: Counter[str] = Counter()
    inclusive: Counter[str] = Counter()
    for frames, n in stacks:
        if frames:
            self_time[frames[-1]] += n
        for frame in set(frames):
            match = _FRAME.match(frame)
            if match and match["where"].startswith(OUR_PACKAGES):
                inclusive[frame] += n
    lines.append("  hottest frames (self time):")
    lines += [f"    {100 * n / total:5.1f} %  {frame}" for frame, n in self_time.most_common(top)]
    lines.append("  our functions (inclusive):")
    lines += [f"    {100 * n / total:5.1f} %  {frame}" for frame, n in inclusive.most_common(top)]
    return "\n".join(lines)


def main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(
        prog="benchmarks/profile_summary.py",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument(
        "profiles", nargs="+", metavar="FOLDED", help="py-spy profiles, folded (api*.folded: the API's)"
    )
    for raw in parser.parse_args(argv).profiles:
        path = Path(raw)
        role = "api" if path.stem.startswith("api") else "worker"
        print(summarize(path, role))
        print()
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
