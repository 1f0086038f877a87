"""`manage.py dlq list|requeue|discard`: dead-letter review from the shell (same services as the admin)."""

from __future__ import annotations

import json
from typing import Any

from django.core.management.base import BaseCommand, CommandError, CommandParser
from tqdm import tqdm

from events.deadletters import (
    deadletter_as_dict,
    deadletter_discard,
    deadletter_list,
    deadletter_pending_ids,
    deadletter_requeue,
)
from events.models import DeadLetter

_ERROR_WIDTH = 60


class Command(BaseCommand):
    help = "Review dead letters: list them, requeue (publish the original payload again) or discard."

    def add_arguments(self, parser: CommandParser) -> None:
        sub = parser.add_subparsers(dest="action", required=True, metavar="ACTION")
        listing = sub.add_parser("list", help="list dead letters, newest first")
        # Free text: rows imported from Service Bus keep the broker's own reasons as well
        # (`manage.py import_servicebus_dead_letters`).
        listing.add_argument("--reason", help=f"e.g. {', '.join(DeadLetter.Reason.values)}")
        listing.add_argument("--status", choices=DeadLetter.Status.values)
        listing.add_argument("--json", action="store_true", help="print one JSON array")
        requeue = sub.add_parser("requeue", help="publish dead letters again (by id, or --all pending)")
        requeue.add_argument("ids", nargs="*", type=int, metavar="ID")
        requeue.add_argument("--all", action="store_true", help="every pending dead letter")
        requeue.add_argument("--reason", help="with --all: only this reason (e.g. MaxRetriesExceeded)")
        discard = sub.add_parser("discard", help="mark pending dead letters discarded (kept for the record)")
        discard.add_argument("ids", nargs="+", type=int, metavar="ID")

    def handle(self, *args: Any, **options: Any) -> None:
        action = options["action"]
        if action == "list":
            self._list(reason=options["reason"], status=options["status"], as_json=options["json"])
        elif action == "requeue":
            self._requeue(ids=options["ids"], everything=options["all"], reason=options["reason"])
        else:
            discarded = deadletter_discard(ids=options["ids"])
            skipped = len(set(options["ids"])) - discarded
            self.stdout.write(
                f"Discarded {discarded} dead letter(s); skipped {skipped} (unknown or not pending)."
            )

    def _list(self, *, reason: str | None, status: str | None, as_json: bool) -> None:
        rows = [deadletter_as_dict(letter) for letter in deadletter_list(reason=reason, status=status)]
        if as_json:
            self.stdout.write(json.dumps(rows, ensure_ascii=False))
            return
        self.stdout.write(
            f"{'ID':>6}  {'REASON':<22} {'STATUS':<9} {'TENANT':<16} {'TRIES':>5}  {'CREATED':<20}  ERROR"
        )
        for row in rows:
            error = row["error"].replace("\n", " ")
            if len(error) > _ERROR_WIDTH:
                error = error[: _ERROR_WIDTH - 1] + "…"
            self.stdout.write(
                f"{row['id']:>6}  {row['reason']:<22} {row['status']:<9} {row['tenant'] or '-':<16} "
                f"{row['attempts']:>5}  {row['created_at'][:19]:<20}  {error}"
            )
        self.stderr.write(f"{len(rows)} dead letter(s).")

    def _requeue(self, *, ids: list[int], everything: bool, reason: str | None) -> None:
        if everything == bool(ids):
            raise CommandError("Give dead-letter IDs or --all, not both and not neither.")
        if reason and not everything:
            raise CommandError("--reason only applies with --all.")
        if everything:
            ids = deadletter_pending_ids(reason=reason)
            with tqdm(total=len(ids), desc="requeue", unit="msg", file=self.stderr._out) as bar:
                result = deadletter_requeue(ids=ids, on_progress=bar.update)
        else:
            result = deadletter_requeue(ids=ids)
        self.stdout.write(f"Requeued {len(result.requeued)} dead letter(s).")
        if result.skipped:
            self.stdout.write(
                "Skipped (unknown or already requeued): " + ", ".join(str(pk) for pk in result.skipped)
            )
