"""The Cosmos DB adapter beyond the shared contract: item layout, month index, partition-scoped
queries, provisioning, configuration and readiness. Over the wire against the test server."""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from io import StringIO
from typing import Any

import pytest
from azure.cosmos import CosmosClient, PartitionKey
from azure.identity import DefaultAzureCredential
from django.core.exceptions import ImproperlyConfigured
from django.core.management import call_command

from events.stores import get_event_store
from events.stores.base import StoreUnavailable
from events.stores.cosmos import INDEXING_POLICY, CosmosEventStore
from tests.cosmos_fixtures import COSMOS_EMULATOR_KEY, TEST_DATABASE, CosmosServer, FaultProxy, free_port
from tests.events.test_store_contract import NOV, OCT, SEP, ids, make_event

pytestmark = pytest.mark.filterwarnings("ignore:Unverified HTTPS request")

RETENTION_SECONDS = 2_592_000


def plain_client(server: CosmosServer) -> CosmosClient:
    return CosmosClient(server.endpoint, credential=COSMOS_EMULATOR_KEY, connection_verify=False)


@pytest.fixture
def cosmos_settings(settings: Any, cosmos_server: CosmosServer) -> Iterator[Any]:
    settings.EVENT_STORE = "cosmos"
    settings.COSMOS_ENDPOINT = cosmos_server.endpoint
    settings.COSMOS_KEY = COSMOS_EMULATOR_KEY
    settings.COSMOS_DATABASE = TEST_DATABASE
    settings.COSMOS_CONTAINER = f"events-from-settings-{uuid.uuid4().hex[:8]}"
    settings.COSMOS_VERIFY_TLS = False
    get_event_store.cache_clear()
    yield settings
    get_event_store.cache_clear()


def test_it_stores_items_with_id_pk_and_the_container_ttl(cosmos_server: CosmosServer) -> None:
    store = cosmos_server.store()
    event = make_event(tenant="acme", timestamp=OCT, received_at=NOV)
    store.write_many([event])

    container = cosmos_server.plain_container(store.container_name)
    item = container.read_item(event["event_id"], partition_key="acme:2026-10")
    properties = container.read()

    assert item["id"] == event["event_id"]
    assert item["pk"] == "acme:2026-10"  # the month of the event's timestamp, not of its arrival
    assert "ttl" not in item  # the container's default TTL applies
    assert properties["defaultTtl"] == RETENTION_SECONDS
    assert properties["partitionKey"]["paths"] == ["/pk"]
    for name in (
        "event_type",
        "user_id",
        "properties",
        "timestamp",
        "received_at",
        "correlation_id",
        "tenant",
    ):
        assert item[name] == event[name], name


def test_it_keeps_a_month_index_that_outlives_the_events(cosmos_server: CosmosServer) -> None:
    store = cosmos_server.store()
    store.write_many([make_event(timestamp=NOV), make_event(timestamp=SEP), make_event(timestamp=NOV)])
    store.write_many([make_event(tenant="globex", timestamp=OCT)])

    container = cosmos_server.plain_container(store.container_name)
    markers = list(
        container.query_items("SELECT * FROM c WHERE c.pk = 'acme:months'", partition_key="acme:months")
    )

    assert sorted(m["month"] for m in markers) == ["2026-09", "2026-11"]
    assert {m["ttl"] for m in markers} == {RETENTION_SECONDS + store.MONTH_MARKER_TTL_MARGIN_SECONDS}


def test_it_queries_only_the_month_partitions_in_range(
    cosmos_server: CosmosServer, fault_proxy: FaultProxy
) -> None:
    store = cosmos_server.store(endpoint=fault_proxy.endpoint)
    events = [make_event(timestamp=t) for t in (NOV, OCT, SEP, SEP - timedelta(days=400))]
    store.write_many([*events, make_event(tenant="globex", timestamp=OCT)])
    fault_proxy.seen.clear()

    page = store.query(tenant="acme", since=OCT - timedelta(days=1), until=NOV + timedelta(days=1))
    assert ids(page.results) == ids(events[:2])
    assert store.get(tenant="acme", event_id=events[1]["event_id"]) is not None
    assert single_partition_keys(fault_proxy) == {"acme:months", "acme:2026-11", "acme:2026-10"}

    # Counting by arrival reads every older month too (a back-dated event arrives "now"), but
    # never a month after until + 23 h.
    hour = datetime(2026, 10, 15, 12, tzinfo=UTC)
    assert store.count_stored_by_hour(tenant="acme", since=hour, until=hour + timedelta(hours=2)) == {hour: 1}
    assert single_partition_keys(fault_proxy) == {
        "acme:months",
        "acme:2026-10",
        "acme:2026-09",
        "acme:2025-08",
    }


def test_it_reads_a_bounded_number_of_month_partitions(
    cosmos_server: CosmosServer, fault_proxy: FaultProxy
) -> None:
    store = cosmos_server.store(endpoint=fault_proxy.endpoint)
    assert store.read_max_months == 3
    # Eight months of back-dated events, all received in the same hour.
    events = [make_event(timestamp=NOV - timedelta(days=31 * k), received_at=NOV) for k in range(8)]
    store.write_many([*events, make_event(tenant="globex", timestamp=SEP)])
    newest = {"acme:months", "acme:2026-11", "acme:2026-10", "acme:2026-09"}
    fault_proxy.seen.clear()

    assert store.get(tenant="acme", event_id="no-such-event") is None
    assert store.get(tenant="globex", event_id=events[0]["event_id"]) is None  # never another tenant's
    fault_proxy.seen.clear()
    assert store.get(tenant="acme", event_id="no-such-event") is None
    assert reads(fault_proxy) == (newest, 1)  # 3 months one by one, the 5 older ones in one query
    oldest = store.get(tenant="acme", event_id=events[-1]["event_id"])
    assert oldest is not None and oldest["timestamp"] == events[-1]["timestamp"]
    assert reads(fault_proxy) == (newest, 1)

    page = store.query(tenant="acme", limit=5)
    assert ids(page.results) == ids(events[:5])  # newest first across the bound
    assert reads(fault_proxy) == (newest, 1)
    assert page.next_cursor is not None
    rest = store.query(tenant="acme", limit=5, cursor=page.next_cursor)
    assert ids(rest.results) == ids(events[5:]) and rest.next_cursor is None
    assert reads(fault_proxy)[1] == 1  # the next page: again 3 months, then one query

    hour = NOV.replace(minute=0)
    assert store.count_stored_by_hour(tenant="acme", since=hour - timedelta(hours=1), until=hour + timedelta(
        hours=1)) == {hour: 8}  # fmt: skip
    partitions, cross = reads(fault_proxy)
    assert partitions == newest and cross == 1 + 2  # the range once, then each of its 2 hours


def reads(proxy: FaultProxy) -> tuple[set[str | None], int]:
    """The partitions single-partition queries read since the last call, and how many queries
    were cross-partition."""
    queries = proxy.requests("query")
    proxy.seen.clear()
    return {q.partition_key for q in queries if not q.cross_partition}, sum(
        q.cross_partition for q in queries
    )


def single_partition_keys(proxy: FaultProxy) -> set[str | None]:
    """The partitions the adapter's queries read since the last call; each must be one partition."""
    queries = proxy.requests("query")
    proxy.seen.clear()
    assert queries, "the adapter sent no queries through the proxy"
    assert not [q for q in queries if q.cross_partition or q.partition_key is None]
    return {q.partition_key for q in queries}


def test_it_provisions_the_container_idempotently(cosmos_server: CosmosServer) -> None:
    first = cosmos_server.provision("events-provisioned")
    second = cosmos_server.provision("events-provisioned")

    assert "container events-provisioned: created (partition key /pk)" in first
    assert "container events-provisioned: exists" in second
    assert not [line for line in second if "updated" in line]
    # The test server has no throughput offers: the command says so instead of failing.
    assert [line for line in second if line.startswith("throughput: skipped")]
    properties = cosmos_server.plain_container("events-provisioned").read()
    assert properties["partitionKey"]["paths"] == ["/pk"]
    assert properties["defaultTtl"] == RETENTION_SECONDS
    assert properties["indexingPolicy"]["compositeIndexes"] == INDEXING_POLICY["compositeIndexes"]


def test_it_aligns_ttl_and_indexing_of_an_existing_container(cosmos_server: CosmosServer) -> None:
    plain_client(cosmos_server).create_database_if_not_exists(TEST_DATABASE).create_container(
        "events-old", partition_key=PartitionKey(path="/pk"), default_ttl=60
    )

    report = cosmos_server.provision("events-old")

    assert "container events-old: default TTL and indexing policy updated" in report
    properties = cosmos_server.plain_container("events-old").read()
    assert properties["defaultTtl"] == RETENTION_SECONDS
    assert properties["indexingPolicy"]["compositeIndexes"] == INDEXING_POLICY["compositeIndexes"]


def test_it_refuses_a_container_partitioned_by_another_path(cosmos_server: CosmosServer) -> None:
    plain_client(cosmos_server).create_database_if_not_exists(TEST_DATABASE).create_container(
        "events-by-tenant", partition_key=PartitionKey(path="/tenant")
    )

    with pytest.raises(ImproperlyConfigured, match="partition key cannot change"):
        cosmos_server.provision("events-by-tenant")


def test_it_provisions_from_the_management_command(cosmos_settings: Any) -> None:
    out = StringIO()

    call_command("provision_cosmos", stdout=out)
    call_command("provision_cosmos", stdout=out)

    text = out.getvalue()
    name = cosmos_settings.COSMOS_CONTAINER
    assert f"container {name}: created (partition key /pk)" in text
    assert f"container {name}: exists" in text
    assert f"default TTL: {RETENTION_SECONDS} s" in text
    assert "throughput: skipped" in text
    assert text.count("Cosmos DB event store is provisioned.") == 2


def test_it_is_the_store_and_the_readiness_check_when_configured(cosmos_settings: Any, db: None) -> None:
    from ops.health import readiness

    call_command("provision_cosmos", stdout=StringIO())
    store = get_event_store()
    assert isinstance(store, CosmosEventStore)
    assert store.container_name == cosmos_settings.COSMOS_CONTAINER
    assert readiness()["event_store"] == "ok"

    cosmos_settings.COSMOS_ENDPOINT = f"https://127.0.0.1:{free_port()}"  # nothing listens there
    get_event_store.cache_clear()
    assert readiness()["event_store"] == "unavailable"  # why goes to the log, not to the public probe


def test_it_reports_a_missing_container_as_unavailable(cosmos_server: CosmosServer) -> None:
    store = cosmos_server.store(container="never-provisioned")

    with pytest.raises(StoreUnavailable):
        store.ping()
    with pytest.raises(StoreUnavailable):
        store.write_many([make_event()])


def test_it_needs_an_endpoint(settings: Any) -> None:
    settings.COSMOS_ENDPOINT = ""

    with pytest.raises(ImproperlyConfigured, match="COSMOS_ENDPOINT is required"):
        CosmosEventStore.from_settings()


def test_it_uses_managed_identity_without_a_key(settings: Any) -> None:
    settings.COSMOS_ENDPOINT = "https://cloudscale.documents.azure.com:443/"
    settings.COSMOS_KEY = ""

    store = CosmosEventStore.from_settings()

    assert isinstance(store._credential, DefaultAzureCredential)  # no I/O until first use
    assert (store.database_name, store.container_name) == ("cloudscale", "events")
