"""`manage.py provision_servicebus`: create or correct the Service Bus queues.

Their settings: docs/api.md, "Service Bus queues".
"""

from __future__ import annotations

from typing import Any

from django.conf import settings
from django.core.management.base import BaseCommand, CommandError, CommandParser

from ops.servicebus import (
    QUEUE_PROPERTIES,
    ServiceBusNotConfigured,
    servicebus_channel,
    servicebus_entity_name,
    servicebus_provision_queue,
)


class Command(BaseCommand):
    help = (
        "Create the Service Bus queues on the namespace of CLOUDSCALE_BROKER_URL (the ingestion queue "
        "CLOUDSCALE_QUEUE and the ops queue CLOUDSCALE_OPS_QUEUE) with max size 5 GB, message TTL 14 days, "
        "lock 5 minutes, max delivery count 10 and dead-lettering on expiry, or bring existing queues to "
        "those settings. Idempotent."
    )

    def add_arguments(self, parser: CommandParser) -> None:
        parser.add_argument(
            "--queue",
            action="append",
            dest="queues",
            metavar="NAME",
            help="provision only this queue (repeatable); default: the ingestion and ops queues",
        )

    def handle(self, *args: Any, **options: Any) -> None:
        from azure.core.exceptions import AzureError
        from kombu.exceptions import OperationalError

        queues = options["queues"] or [settings.QUEUE_NAME, settings.OPS_QUEUE_NAME]
        self.stdout.write("Queue settings: " + ", ".join(f"{k}={v}" for k, v in QUEUE_PROPERTIES.items()))
        try:
            with servicebus_channel() as channel:
                for queue in queues:
                    entity = servicebus_entity_name(channel, queue)
                    result = servicebus_provision_queue(admin=channel.queue_mgmt_service, queue=entity)
                    self.stdout.write(f"Service Bus queue {result.queue}: {result.action}")
                    for name, (was, now) in sorted(result.changed.items()):
                        self.stdout.write(f"  {name}: {was} -> {now}")
        except ServiceBusNotConfigured as exc:
            raise CommandError(str(exc)) from None
        except (AzureError, OperationalError) as exc:
            reason = f"{type(exc).__name__}: {exc}"
            raise CommandError(f"Service Bus is unreachable or refused: {reason}") from None
