"""`manage.py loadgen`: realistic synthetic traffic against a running platform (benchmarks/loadgen.py)."""

from __future__ import annotations

import argparse
import json
import os
from pathlib import Path
from typing import Any

from django.conf import settings
from django.core.exceptions import ValidationError
from django.core.management.base import BaseCommand, CommandError, CommandParser
from django.db import DatabaseError

from benchmarks.loadgen import LoadConfig, TrafficGenerator, format_summary, run_load
from tenants.models import ApiKey, Tenant
from tenants.services import DEMO_TENANT, TenantRetired, tenant_create, tenant_create_key

DEFAULT_URL = "http://127.0.0.1:8000"


def _fraction(raw: str) -> float:
    value = float(raw)
    if not 0 <= value <= 1:
        raise argparse.ArgumentTypeError(f"{raw} is not a fraction between 0 and 1")
    return value


def _at_least(minimum: float, kind: type[int] | type[float] = int) -> Any:
    def parse(raw: str) -> int | float:
        value = kind(raw)
        if value < minimum:
            raise argparse.ArgumentTypeError(f"{raw} is below {minimum}")
        return value

    return parse


class Command(BaseCommand):
    help = (
        "Send realistic synthetic traffic to the ingestion API: interleaved sessions that view, search, "
        "add to cart, purchase or abandon, sign up and log in, plus a few fraud-like bursts. Shows a "
        "progress bar, then a summary: events sent, accepted, duplicates, rejected by reason, responses "
        "by status (429, 503, ...) and latency p50/p95/p99; Ctrl-C stops early with the summary of what "
        "was sent. Example: "
        "`manage.py loadgen --events 20000 --batch 500 --concurrency 4` (against `make run`)."
    )

    def add_arguments(self, parser: CommandParser) -> None:
        parser.add_argument(
            "--events", type=_at_least(1), required=True, metavar="N", help="how many events to send"
        )
        parser.add_argument(
            "--batch",
            type=_at_least(1),
            default=1,
            metavar="B",
            help="events per request: 1 posts single events to /api/events, more "
            f"(≤ {settings.MAX_BATCH_EVENTS}) "
            "posts batches to /api/events/batch (default 1)",
        )
        parser.add_argument(
            "--rate",
            type=_at_least(0, float),
            default=0.0,
            metavar="R",
            help="target events per second over all clients; 0 = as fast as the server answers (default)",
        )
        parser.add_argument(
            "--concurrency",
            type=_at_least(1),
            default=8,
            metavar="C",
            help="concurrent clients, each a thread with its own keep-alive connection (default 8)",
        )
        parser.add_argument(
            "--tenant",
            default=DEMO_TENANT,
            metavar="SLUG",
            help="the tenant to send as when --key and CLOUDSCALE_API_KEY are absent: the "
            f"'{DEMO_TENANT}' tenant's key `make run` keeps in the state folder, else a new ingest-only key "
            f"of the tenant, created if missing (default {DEMO_TENANT})",
        )
        parser.add_argument("--url", default=DEFAULT_URL, help=f"API base URL (default {DEFAULT_URL})")
        parser.add_argument("--key", help="API key (default: $CLOUDSCALE_API_KEY, then the demo key file)")
        parser.add_argument(
            "--retries",
            type=_at_least(0),
            default=0,
            metavar="N",
            help="resend a request refused with 429/503 (after its Retry-After) or left without a "
            "response, up to N times, with the same event ids (default 0: report them as they are)",
        )
        parser.add_argument(
            "--timeout", type=_at_least(0.1, float), default=10.0, help="seconds per request (default 10)"
        )
        parser.add_argument(
            "--invalid-ratio",
            type=_fraction,
            default=0.0,
            metavar="F",
            help="fraction of events made invalid on purpose (rejected with a receipt; default 0)",
        )
        parser.add_argument(
            "--fraud-ratio",
            type=_fraction,
            default=0.02,
            metavar="F",
            help="fraction of sessions that are fraud-like bursts (default 0.02)",
        )
        parser.add_argument(
            "--users", type=_at_least(1), default=2000, help="size of the returning-user pool (default 2000)"
        )
        parser.add_argument(
            "--seed", type=int, help="seed of the traffic generator (same seed, same sessions)"
        )
        parser.add_argument(
            "--forwarded-for",
            action="store_true",
            help="send each session's synthetic client address as X-Forwarded-For (the API believes it "
            "only if this host is in CLOUDSCALE_TRUSTED_PROXIES)",
        )
        parser.add_argument(
            "--ids-out",
            type=Path,
            metavar="PATH",
            help="write the id of every event that got a 202 receipt (accepted or duplicate), one per line",
        )
        parser.add_argument(
            "--summary-json", type=Path, metavar="PATH", help="also write the summary as JSON"
        )
        parser.add_argument("--no-progress", action="store_true", help="no progress bar")

    def handle(self, *args: Any, **options: Any) -> None:
        if options["batch"] > settings.MAX_BATCH_EVENTS:
            raise CommandError(f"--batch must be at most {settings.MAX_BATCH_EVENTS} (the API's limit)")
        key, key_source = self._api_key(tenant=options["tenant"], key=options["key"])
        config = LoadConfig(
            url=options["url"].rstrip("/"),
            key=key,
            events=options["events"],
            batch=options["batch"],
            rate=options["rate"],
            concurrency=options["concurrency"],
            timeout=options["timeout"],
            retries=options["retries"],
            forwarded_for=options["forwarded_for"],
        )
        generator = TrafficGenerator(
            seed=options["seed"],
            users=options["users"],
            fraud_ratio=options["fraud_ratio"],
            invalid_ratio=options["invalid_ratio"],
        )
        summary = run_load(config, generator=generator, progress=False if options["no_progress"] else None)
        if options["ids_out"]:
            options["ids_out"].write_text("".join(f"{event_id}\n" for event_id in summary.receipt_ids))
        if options["summary_json"]:
            options["summary_json"].write_text(json.dumps(summary.as_dict(), indent=2))
        self.stdout.write(format_summary(summary, key_source=key_source))

    @staticmethod
    def _api_key(*, tenant: str, key: str | None) -> tuple[str, str]:
        """(key, where it came from): --key, then $CLOUDSCALE_API_KEY, then the demo key file that
        `make run` keeps, else a new ingest-only key of the tenant (created if missing) in this
        settings' database, which is the platform's own when loadgen runs beside `make run`."""
        if key:
            return key, "--key"
        from_env = os.environ.get("CLOUDSCALE_API_KEY", "").strip()
        if from_env:
            return from_env, "CLOUDSCALE_API_KEY"
        key_file = settings.STATE_DIR / "demo_api_key"
        if tenant == DEMO_TENANT and key_file.exists():
            return key_file.read_text().strip(), f"tenant {DEMO_TENANT}"
        try:
            if Tenant.objects.filter(slug=tenant).exists():
                issued = tenant_create_key(slug=tenant, scope=ApiKey.Scope.INGEST)
                return issued.key, f"tenant {tenant} (a new ingest-only key)"
            issued = tenant_create(slug=tenant)
            return issued.key, f"tenant {tenant} (created just now)"
        except (DatabaseError, ValidationError, TenantRetired) as exc:
            raise CommandError(
                f"no API key for tenant {tenant!r} ({exc}): pass --key or set CLOUDSCALE_API_KEY"
            ) from None
