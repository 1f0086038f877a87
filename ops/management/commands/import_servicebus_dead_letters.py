"""`manage.py import_servicebus_dead_letters`: Service Bus's own dead letters into our dead-letter table.

Messages the broker dead-lettered itself (max delivery count, expiry) sit in the ingestion queue's
`$DeadLetterQueue` sub-queue; this moves them into the table that `manage.py dlq` and the admin review.
"""

from __future__ import annotations

from typing import Any

from django.core.management.base import CommandError, CommandParser
from tqdm import tqdm

from cloudscale_project.commands import ExampleCommand
from ops.servicebus import ServiceBusNotConfigured, servicebus_import_queue_dead_letters


class Command(ExampleCommand):
    examples = """
manage.py import_servicebus_dead_letters              # everything the sub-queue holds now
manage.py import_servicebus_dead_letters --max 1000   # at most 1,000 broker messages
"""
    help = "Move Service Bus's own dead-letter sub-queue of the ingestion queue into the dead-letter table."

    def add_arguments(self, parser: CommandParser) -> None:
        parser.add_argument("--max", type=int, default=None, help="stop after this many broker messages")
        parser.add_argument("--wait", type=float, default=5.0, help="seconds to wait for the next message")

    def handle(self, *args: Any, **options: Any) -> None:
        max_messages, wait_seconds = options["max"], options["wait"]
        from azure.core.exceptions import AzureError
        from kombu.exceptions import OperationalError

        try:
            with tqdm(desc="import", unit="msg", file=self.stderr._out) as bar:
                result = servicebus_import_queue_dead_letters(
                    max_messages=max_messages, wait_seconds=wait_seconds, on_progress=bar.update
                )
        except ServiceBusNotConfigured as exc:
            raise CommandError(str(exc)) from None
        except (AzureError, OperationalError) as exc:
            raise CommandError(
                f"Service Bus is unreachable or refused: {type(exc).__name__}: {exc}"
            ) from None
        self.stdout.write(
            f"Imported {result.messages} Service Bus dead letter(s): {result.recorded} new dead letter(s)."
        )
        if result.lock_lost:
            self.stdout.write(
                f"{result.lock_lost} lost their lock before completion; the next import sees them again."
            )
