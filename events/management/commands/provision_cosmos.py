"""`manage.py provision_cosmos`: create the Cosmos DB database and event container (idempotent)."""

from __future__ import annotations

from typing import Any

from azure.core.exceptions import AzureError
from django.conf import settings
from django.core.exceptions import ImproperlyConfigured
from django.core.management.base import CommandError

from cloudscale_project.commands import ExampleCommand
from events.stores.cosmos import CosmosEventStore


class Command(ExampleCommand):
    examples = """
COSMOS_ENDPOINT=https://<account>.documents.azure.com:443/ COSMOS_KEY=<key> manage.py provision_cosmos
"""
    help = (
        "Create the Cosmos DB database and container of the event store if missing: partition key /pk, "
        "default TTL (retention), composite index for newest-first queries, autoscale throughput where "
        "the account supports it. Safe to run again. Uses COSMOS_ENDPOINT, COSMOS_KEY (or "
        "DefaultAzureCredential), COSMOS_DATABASE, COSMOS_CONTAINER, COSMOS_AUTOSCALE_MAX_RU."
    )

    def handle(self, *args: Any, **options: Any) -> None:
        try:
            store = CosmosEventStore.from_settings()
            self.stdout.write(f"Cosmos DB {store.endpoint}")
            for line in store.provision(autoscale_max_ru=settings.COSMOS_AUTOSCALE_MAX_RU):
                self.stdout.write(f"  {line}")
        except ImproperlyConfigured as exc:
            raise CommandError(str(exc)) from exc
        except AzureError as exc:
            raise CommandError(f"Cosmos DB refused: {exc}".splitlines()[0]) from exc
        self.stdout.write(self.style.SUCCESS("Cosmos DB event store is provisioned."))
