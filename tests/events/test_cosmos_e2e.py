"""End to end with CLOUDSCALE_EVENT_STORE=cosmos: a message on the broker → a live worker process
→ items in the container, read back with a plain azure-cosmos client."""

from __future__ import annotations

import uuid
from collections.abc import Iterator, Mapping
from datetime import timedelta
from pathlib import Path
from typing import Any

import pytest
from django.conf import settings

from cloudscale_project.celery import app
from tests.conftest import Actor, LiveProcess, child_env, start_worker, wait_until
from tests.cosmos_fixtures import COSMOS_EMULATOR_KEY, TEST_DATABASE, CosmosServer
from tests.events.test_store_contract import NOV, OCT, ids, make_event

pytestmark = [pytest.mark.e2e, pytest.mark.filterwarnings("ignore:Unverified HTTPS request")]


@pytest.fixture
def cosmos_container(cosmos_server: CosmosServer) -> str:
    name = f"events-e2e-{uuid.uuid4().hex[:8]}"
    cosmos_server.provision(name)
    return name


@pytest.fixture
def cosmos_worker(
    transactional_db: None, tmp_path: Path, cosmos_server: CosmosServer, cosmos_container: str
) -> Iterator[LiveProcess]:
    worker = start_worker(
        tmp_path,
        env=child_env(
            CLOUDSCALE_EVENT_STORE="cosmos",
            COSMOS_ENDPOINT=cosmos_server.endpoint,
            COSMOS_KEY=COSMOS_EMULATOR_KEY,
            COSMOS_DATABASE=TEST_DATABASE,
            COSMOS_CONTAINER=cosmos_container,
            COSMOS_VERIFY_TLS="false",
        ),
    )
    yield worker
    worker.stop()


def test_it_stores_published_events_as_cosmos_items_once(
    acme: Actor, cosmos_worker: LiveProcess, cosmos_server: CosmosServer, cosmos_container: str
) -> None:
    events = [
        make_event(tenant="acme", timestamp=NOV, event_type="page_view"),
        make_event(tenant="acme", timestamp=NOV - timedelta(minutes=5), event_type="search"),
        make_event(tenant="acme", timestamp=OCT, received_at=NOV, event_type="purchase"),
    ]
    kwargs = {"tenant": "acme", "events": events, "correlation_id": str(uuid.uuid4())}
    container = cosmos_server.plain_container(cosmos_container)

    def stored() -> list[dict[str, Any]]:
        return list(
            container.query_items(
                "SELECT * FROM c WHERE c.tenant = 'acme' AND IS_DEFINED(c.event_id)",
                enable_cross_partition_query=True,
            )
        )

    app.send_task("events.process_batch", kwargs=kwargs, queue=settings.QUEUE_NAME)
    wait_until(
        lambda: len(stored()) == len(events), timeout=60, message=f"3 items\n{cosmos_worker.log()[-3000:]}"
    )

    # A redelivery of the same message stores nothing twice.
    app.send_task("events.process_batch", kwargs=kwargs, queue=settings.QUEUE_NAME)
    wait_until(lambda: "duplicate=3" in cosmos_worker.log(), timeout=60, message="the redelivery")

    items = {item["id"]: item for item in stored()}
    assert sorted(items) == sorted(ids(events))
    assert container.read()["defaultTtl"] == 2_592_000
    for event in events:
        item = container.read_item(event["event_id"], partition_key=item_pk(event))
        assert item["pk"] == item_pk(event)
        assert "ttl" not in item  # expires by the container's default TTL
        assert item["event_type"] == event["event_type"]
        assert item["timestamp"] == event["timestamp"]
        assert item["received_at"] == event["received_at"]
        assert item["correlation_id"] == event["correlation_id"]
        assert item["properties"] == event["properties"]


def item_pk(event: Mapping[str, object]) -> str:
    return f"acme:{str(event['timestamp'])[:7]}"
