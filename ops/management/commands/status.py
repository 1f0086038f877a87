"""`manage.py status [--json]`: is the platform up, and is work flowing? Non-zero exit when not."""

from __future__ import annotations

import json
from typing import Any

from django.core.management.base import CommandParser

from cloudscale_project.commands import ExampleCommand
from ops.status import DEFAULT_MAX_AGE_SECONDS, platform_status, status_problems


class Command(ExampleCommand):
    examples = """
manage.py status
manage.py status --json | jq .queue.depth
*/5 * * * * cd /srv/cloudscale && .venv/bin/python manage.py status --json > /dev/null || alert-ops
"""
    help = (
        "Broker and store reachable, queue depth, workers and pool sizes, concurrency target and tier, "
        "the last hour's accepted/stored/pending, dead letters by reason, the oldest message's age. "
        "Exit status 1 when something is down, pending keeps growing, or the oldest message is too old."
    )
    # Reachability is what this command reports: Django's system checks would only slow it down.
    requires_system_checks: list[str] = []

    def add_arguments(self, parser: CommandParser) -> None:
        parser.add_argument("--json", action="store_true", help="print one JSON object (for scripts)")
        parser.add_argument(
            "--max-age",
            type=float,
            default=DEFAULT_MAX_AGE_SECONDS,
            metavar="SECONDS",
            help=f"fail when the oldest waiting message is older (default {DEFAULT_MAX_AGE_SECONDS:.0f})",
        )

    def handle(self, *args: Any, **options: Any) -> None:
        report = platform_status()
        problems = status_problems(report, max_age_seconds=options["max_age"])
        report["problems"] = problems
        report["ok"] = not problems
        if options["json"]:
            self.stdout.write(json.dumps(report, ensure_ascii=False))
        else:
            self._print(report)
        if problems:
            raise SystemExit(1)

    def _print(self, report: dict[str, Any]) -> None:
        out = self.stdout.write
        out(f"CloudScale status at {report['at']}")
        for name, result in report["checks"].items():
            out(f"  {name:<14} {result}")
        queue = report["queue"]
        age = queue.get("oldest_message_age_seconds")
        out(
            f"queue {queue['name']}: depth {_n(queue.get('depth'))}, oldest message "
            + (f"{age:.0f} s old" if age is not None else "-")
        )
        workers = report.get("workers")
        if workers is None:
            out("workers: unknown (shared state unavailable)")
        elif not workers:
            out("workers: none has sent a heartbeat")
        else:
            out("workers:")
            for name, w in workers.items():
                state = "alive" if w["alive"] else "DOWN"
                out(
                    f"  {name:<40} {state:<6} pool {_n(w['pool_processes'])} processes, "
                    f"last heartbeat {w['age_seconds']:.0f} s ago"
                )
        concurrency = report["concurrency"]
        tier = concurrency.get("tier") or "no target yet"
        out(f"concurrency target: {_n(concurrency.get('target'))} ({tier})")
        last_hour = report.get("last_hour")
        if last_hour is not None:
            out(
                "last hour: "
                + ", ".join(f"{k} {last_hour[k]}" for k in ("accepted", "stored", "dead_lettered", "pending"))
            )
        dead = report.get("dead_letters_pending_by_reason")
        if dead is not None:
            out("dead letters pending: " + (", ".join(f"{r} {n}" for r, n in dead.items()) or "none"))
        beat = report["beat"]
        if beat["last_sample_age_seconds"] is None:
            out("beat: no sample yet")
        else:
            age = beat["last_sample_age_seconds"]
            out(f"beat: last sample {age:.0f} s ago, depths {beat['recent_depths']}")
        if report["problems"]:
            out("PROBLEMS:")
            for problem in report["problems"]:
                out(f"  - {problem}")
        else:
            out("OK")


def _n(value: Any) -> str:
    return "?" if value is None else str(value)
