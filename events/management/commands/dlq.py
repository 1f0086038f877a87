"""`manage.py dlq list|fix|requeue|discard`: dead-letter review from the shell (the admin's services)."""

from __future__ import annotations

import getpass
import json
import sys
from pathlib import Path
from typing import Any

from django.core.management.base import CommandError, CommandParser
from tqdm import tqdm

from cloudscale_project.commands import ExampleCommand
from events.deadletters import (
    FixRejected,
    deadletter_as_dict,
    deadletter_discard,
    deadletter_fix,
    deadletter_fix_fields,
    deadletter_list,
    deadletter_outcome_text,
    deadletter_pending_ids,
    deadletter_requeue,
    deadletter_resolve_outcomes,
)
from events.models import DeadLetter

_ERROR_WIDTH = 60
_OUTCOME_WIDTH = 40


def _who() -> str:
    try:
        return f"shell:{getpass.getuser()}"
    except (KeyError, OSError):
        return "shell"


def parse_assignment(text: str) -> tuple[str, Any]:
    """`field=text` sets a string; `field:=json` a JSON value (numbers, objects, null)."""
    name, sep, value = text.partition("=")
    if not sep or not name.rstrip(":"):
        raise CommandError(f"--set takes FIELD=VALUE or FIELD:=JSON, not {text!r}")
    if name.endswith(":"):
        try:
            return name[:-1], json.loads(value)
        except ValueError:
            raise CommandError(f"--set {name}=: {value!r} is not JSON") from None
    return name, value


class Command(ExampleCommand):
    examples = """
manage.py dlq list --reason UnknownEventType
manage.py dlq fix 12 --set event_type=page_view --set properties.url=https://shop.example/
manage.py dlq fix 12 --set properties.amount:=59.9        # := takes a JSON value
manage.py dlq fix 12 --file event.json                    # the whole corrected event
manage.py dlq requeue 12                                  # publishes the fixed copy
manage.py dlq requeue --all --reason MaxRetriesExceeded
manage.py dlq discard 14
"""
    help = (
        "Review dead letters: list them, fix an event (a corrected copy beside the original), requeue "
        "(publish the payload, or its fixed copy, again) or discard."
    )

    def add_arguments(self, parser: CommandParser) -> None:
        sub = parser.add_subparsers(dest="action", required=True, metavar="ACTION")
        listing = sub.add_parser("list", help="list dead letters, newest first")
        # Free text: rows imported from Service Bus keep the broker's own reasons as well
        # (`manage.py import_servicebus_dead_letters`).
        listing.add_argument("--reason", help=f"e.g. {', '.join(DeadLetter.Reason.values)}")
        listing.add_argument("--status", choices=DeadLetter.Status.values)
        listing.add_argument("--json", action="store_true", help="print one JSON array")
        fix = sub.add_parser(
            "fix",
            help="store a corrected copy of a dead letter's event (checked against the catalog); "
            "the next requeue publishes it",
            epilog=parser.epilog,
            formatter_class=parser.formatter_class,
        )
        fix.add_argument("id", type=int, metavar="ID")
        source = fix.add_mutually_exclusive_group(required=True)
        source.add_argument(
            "--set",
            action="extend",
            nargs="+",
            metavar="FIELD=VALUE",
            help="change one field (dotted paths reach into properties); FIELD:=JSON for non-strings",
        )
        source.add_argument(
            "--file", metavar="F", help="a JSON file with the whole corrected event ('-': stdin)"
        )
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
        elif action == "fix":
            self._fix(letter_id=options["id"], assignments=options["set"], path=options["file"])
        else:
            discarded = deadletter_discard(ids=options["ids"])
            skipped = len(set(options["ids"])) - discarded
            self.stdout.write(
                f"Discarded {discarded} dead letter(s); skipped {skipped} (unknown or not pending)."
            )

    def _list(self, *, reason: str | None, status: str | None, as_json: bool) -> None:
        letters = list(deadletter_list(reason=reason, status=status))
        deadletter_resolve_outcomes(letters=letters)
        rows = [deadletter_as_dict(letter) for letter in letters]
        if as_json:
            self.stdout.write(json.dumps(rows, ensure_ascii=False))
            return
        self.stdout.write(
            f"{'ID':>6}  {'REASON':<22} {'STATUS':<9} {'TENANT':<16} {'TRIES':>5}  {'CREATED':<20}  "
            f"{'FIXED':<5}  {'AFTER REQUEUE':<{_OUTCOME_WIDTH}}  ERROR"
        )
        for letter, row in zip(letters, rows, strict=True):
            fixed = "yes" if letter.fixed_payload is not None else "-"
            self.stdout.write(
                f"{row['id']:>6}  {row['reason']:<22} {row['status']:<9} {row['tenant'] or '-':<16} "
                f"{row['attempts']:>5}  {row['created_at'][:19]:<20}  {fixed:<5}  "
                f"{_cut(deadletter_outcome_text(letter) or '-', _OUTCOME_WIDTH):<{_OUTCOME_WIDTH}}  "
                f"{_cut(row['error'], _ERROR_WIDTH)}"
            )
        self.stderr.write(f"{len(rows)} dead letter(s).")

    def _fix(self, *, letter_id: int, assignments: list[str] | None, path: str | None) -> None:
        try:
            if path is not None:
                text = sys.stdin.read() if path == "-" else Path(path).read_text()
                try:
                    event = json.loads(text)
                except ValueError as exc:
                    raise CommandError(f"{path} is not JSON: {exc}") from None
                letter = deadletter_fix(letter_id=letter_id, event=event, by=_who())
            else:
                fields = dict(parse_assignment(a) for a in assignments or [])
                letter = deadletter_fix_fields(letter_id=letter_id, assignments=fields, by=_who())
        except OSError as exc:
            raise CommandError(f"cannot read {path}: {exc}") from None
        except FixRejected as exc:
            for error in exc.errors:
                self.stderr.write(f"  {error.field}: {error.message}")
            raise CommandError(f"Dead letter {letter_id} not fixed: {len(exc.errors)} error(s).") from None
        changes = letter.history[-1].get("changes", []) if letter.history else []
        for change in changes:
            self.stdout.write(
                f"  {change['field']}: {json.dumps(change['old'])} -> {json.dumps(change['new'])}"
            )
        self.stdout.write(
            f"Fixed dead letter {letter_id}: {len(changes)} change(s); the original is kept. "
            f"Publish it with: manage.py dlq requeue {letter_id}"
        )

    def _requeue(self, *, ids: list[int], everything: bool, reason: str | None) -> None:
        if everything == bool(ids):
            raise CommandError("Give dead-letter IDs or --all, not both and not neither.")
        if reason and not everything:
            raise CommandError("--reason only applies with --all.")
        if everything:
            ids = deadletter_pending_ids(reason=reason)
            with tqdm(total=len(ids), desc="requeue", unit="msg", file=self.stderr._out) as bar:
                result = deadletter_requeue(ids=ids, by=_who(), on_progress=bar.update)
        else:
            result = deadletter_requeue(ids=ids, by=_who())
        self.stdout.write(f"Requeued {len(result.requeued)} dead letter(s).")
        if result.skipped:
            self.stdout.write(
                "Skipped (unknown or already requeued): " + ", ".join(str(pk) for pk in result.skipped)
            )


def _cut(text: str, width: int) -> str:
    text = text.replace("\n", " ")
    return text if len(text) <= width else text[: width - 1] + "…"
