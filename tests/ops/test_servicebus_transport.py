"""A real Celery worker on kombu's real Service Bus transport (our subclass), over the in-memory SDK fake.

The worker runs in this process (celery.contrib.testing, solo pool) on a Celery app configured by
the real settings module with CLOUDSCALE_BROKER_URL=azureservicebus://…; only the SDK's client
classes are fake (tests/fakes/servicebus.py).
"""

from __future__ import annotations

import threading
import time
from collections import Counter
from collections.abc import Iterator
from datetime import timedelta
from typing import Any

import pytest
from azure.core.exceptions import ServiceRequestError
from azure.identity import DefaultAzureCredential
from azure.servicebus import ServiceBusReceiveMode
from celery import Celery
from celery.contrib.testing.worker import start_worker
from celery.exceptions import Reject
from kombu.exceptions import OperationalError

from tests.conftest import wait_until
from tests.fakes.servicebus import (
    SAS_KEY,
    FakeServiceBus,
    FakeServiceBusClient,
    install,
    servicebus_app,
    servicebus_settings,
)

# The idle receiver's long poll; short here so a test worker stops quickly (production: 5 s).
_TEST_WAIT_SECONDS = 0.5


class Deliveries:
    """What the test tasks saw, per key; shared with the worker thread."""

    def __init__(self) -> None:
        self.attempts: Counter[str] = Counter()
        self.done: list[str] = []
        self._lock = threading.Lock()

    def attempt(self, key: str) -> int:
        with self._lock:
            self.attempts[key] += 1
            return self.attempts[key]

    def finish(self, key: str) -> None:
        with self._lock:
            self.done.append(key)


@pytest.fixture
def servicebus(monkeypatch: pytest.MonkeyPatch) -> FakeServiceBus:
    return install(monkeypatch)


@pytest.fixture
def settings_values(servicebus: FakeServiceBus, monkeypatch: pytest.MonkeyPatch) -> dict[str, Any]:
    return servicebus_settings(monkeypatch, servicebus.sas_url)


@pytest.fixture
def deliveries() -> Deliveries:
    return Deliveries()


@pytest.fixture
def sb_app(settings_values: dict[str, Any], deliveries: Deliveries) -> Iterator[Celery]:
    app = servicebus_app(settings_values, wait_time_seconds=_TEST_WAIT_SECONDS)

    @app.task(name="tests.servicebus.record", bind=True, shared=False)
    def record(self: Any, *, key: str, requeue_times: int = 0, sleep: float = 0.0) -> None:
        attempt = deliveries.attempt(key)
        if attempt <= requeue_times:
            raise Reject(f"attempt {attempt} gives the message back", requeue=True)
        time.sleep(sleep)
        deliveries.finish(key)

    yield app
    # start_worker made this app the current and default one; give the suite its own back.
    from cloudscale_project.celery import app as main_app

    main_app.set_current()
    main_app.set_default()


@pytest.fixture
def queue(settings_values: dict[str, Any]) -> str:
    return str(settings_values["QUEUE_NAME"])


@pytest.fixture
def sb_worker(sb_app: Celery) -> Iterator[Any]:
    with start_worker(
        sb_app, pool="solo", perform_ping_check=False, loglevel="WARNING", shutdown_timeout=15
    ) as worker:
        yield worker


def _publish(app: Celery, **kwargs: Any) -> None:
    app.send_task("tests.servicebus.record", kwargs=kwargs)


def _queue_state(servicebus: FakeServiceBus, queue: str) -> tuple[int, int]:
    fake = servicebus.default.queues[queue]
    return len(fake.active), len(fake.dead_letter)


# --- settings --------------------------------------------------------------------------------------


def test_it_refines_celery_for_service_bus(settings_values: dict[str, Any]) -> None:
    assert settings_values["CELERY_BROKER_TRANSPORT"] == "ops.servicebus_transport:Transport"
    options = settings_values["CELERY_BROKER_TRANSPORT_OPTIONS"]
    assert options["peek_lock_seconds"] == 300
    assert options["use_lock_renewal"] is True
    assert options["max_lock_renewal_duration"] == 2 * settings_values["CELERY_TASK_TIME_LIMIT"]
    assert settings_values["CELERY_WORKER_PREFETCH_MULTIPLIER"] == 1
    assert settings_values["CELERY_WORKER_SEND_TASK_EVENTS"] is False
    assert settings_values["CELERY_WORKER_ENABLE_REMOTE_CONTROL"] is False
    assert settings_values["BROKER_MAX_MESSAGE_BYTES"] == 256 * 1024


def test_it_connects_with_a_sas_key_from_the_url(servicebus: FakeServiceBus, sb_app: Celery) -> None:
    with sb_app.connection_for_write() as conn:
        conn.ensure_connection(max_retries=1)
    credentials = servicebus.default.credentials
    assert credentials, "no client was created"
    assert {(c.policy, c.key) for c in credentials} == {("RootManageSharedAccessKey", SAS_KEY)}
    assert list(servicebus.namespaces) == [servicebus.fqdn]


def test_it_connects_with_default_azure_credential(
    servicebus: FakeServiceBus, monkeypatch: pytest.MonkeyPatch
) -> None:
    app = servicebus_app(servicebus_settings(monkeypatch, servicebus.identity_url))
    app.send_task("tests.servicebus.record", kwargs={"key": "mi"})
    credentials = servicebus.default.credentials
    assert credentials and all(isinstance(c, DefaultAzureCredential) for c in credentials)
    with app.connection_for_write() as conn:
        assert (
            conn.default_channel.queue_declare(queue=app.conf.task_default_queue, passive=True).message_count
            == 1
        )


# --- the worker ------------------------------------------------------------------------------------


def test_it_consumes_and_completes_messages(
    servicebus: FakeServiceBus, sb_app: Celery, sb_worker: Any, deliveries: Deliveries, queue: str
) -> None:
    for n in range(5):
        _publish(sb_app, key=f"m{n}")
    wait_until(lambda: len(deliveries.done) == 5, timeout=20, message="5 messages processed")
    wait_until(lambda: _queue_state(servicebus, queue) == (0, 0), timeout=5, message="all completed")
    assert sorted(deliveries.done) == [f"m{n}" for n in range(5)]
    assert servicebus.default.abandoned == 0


def test_it_redelivers_a_requeued_message_at_once_by_abandoning_it(
    servicebus: FakeServiceBus, sb_app: Celery, sb_worker: Any, deliveries: Deliveries, queue: str
) -> None:
    started = time.monotonic()
    _publish(sb_app, key="again", requeue_times=2)
    wait_until(lambda: deliveries.done == ["again"], timeout=20, message="third delivery processed")
    # The queue's lock is 5 minutes: only an abandon brings a message back this fast.
    assert time.monotonic() - started < 15
    assert deliveries.attempts["again"] == 3
    assert servicebus.default.abandoned == 2
    wait_until(lambda: _queue_state(servicebus, queue) == (0, 0), timeout=5, message="completed")


def test_it_renews_the_lock_of_a_batch_that_outlasts_it(
    servicebus: FakeServiceBus, sb_app: Celery, deliveries: Deliveries, queue: str
) -> None:
    servicebus.create_queue(queue, lock_duration=timedelta(seconds=3))
    _publish(sb_app, key="slow", sleep=5.0)
    with start_worker(sb_app, pool="solo", perform_ping_check=False, loglevel="WARNING", shutdown_timeout=15):
        wait_until(lambda: deliveries.done == ["slow"], timeout=30, message="slow batch done")
        wait_until(lambda: _queue_state(servicebus, queue) == (0, 0), timeout=5, message="completed")
    assert deliveries.attempts["slow"] == 1, "the lock expired and the message was delivered twice"
    assert servicebus.default.renewed >= 1


def test_it_gives_prefetched_messages_back_when_the_worker_stops(
    servicebus: FakeServiceBus, sb_app: Celery, deliveries: Deliveries, queue: str
) -> None:
    for n in range(3):
        _publish(sb_app, key=f"p{n}", sleep=1.0)
    with start_worker(sb_app, pool="solo", perform_ping_check=False, loglevel="WARNING", shutdown_timeout=15):
        wait_until(lambda: deliveries.done, timeout=20, message="first message processed")
    left = 3 - len(deliveries.done)
    fake = servicebus.default.queues[queue]
    # Whatever the worker held but did not run is available again now, not after a 5-minute lock.
    assert len([m for m in fake.active if not m.lock_token]) == left
    assert fake.dead_letter == []


def test_it_dead_letters_after_the_max_delivery_count(
    servicebus: FakeServiceBus, sb_app: Celery, sb_worker: Any, deliveries: Deliveries, queue: str
) -> None:
    _publish(sb_app, key="poison", requeue_times=1000)
    wait_until(
        lambda: _queue_state(servicebus, queue) == (0, 1), timeout=30, message="broker dead-lettered it"
    )
    assert deliveries.attempts["poison"] == 10  # docs/api.md, "Service Bus queues": max delivery count 10
    (message,) = servicebus.default.queues[queue].dead_letter
    assert message.dead_letter_reason == "MaxDeliveryCountExceeded"


# --- depth, outages, monitoring ----------------------------------------------------------------------


def test_it_reports_the_active_backlog_as_queue_depth(
    servicebus: FakeServiceBus, sb_app: Celery, queue: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    for n in range(3):
        _publish(sb_app, key=f"d{n}")
    receiver = FakeServiceBusClient(servicebus.fqdn, None).get_queue_receiver(
        queue, receive_mode=ServiceBusReceiveMode.PEEK_LOCK
    )
    (first,) = receiver.receive_messages(max_message_count=1)
    receiver.dead_letter_message(first, reason="Test", error_description="set aside")

    with sb_app.connection_for_read() as conn:
        declared = conn.default_channel.queue_declare(queue=queue, passive=True)
    assert declared.message_count == 2  # kombu's own count would be 3: it includes the dead letter

    import ops.queue_depth

    monkeypatch.setattr(ops.queue_depth, "app", sb_app)
    assert ops.queue_depth.queue_depth(queue=queue) == 2


def test_it_answers_503_when_the_namespace_is_unreachable(
    servicebus: FakeServiceBus, sb_app: Celery, monkeypatch: pytest.MonkeyPatch, queue: str
) -> None:
    import events.publishing
    from cloudscale_project.errors import BrokerUnavailable

    monkeypatch.setattr(events.publishing, "app", sb_app)
    servicebus.default.fail_with = ServiceRequestError("Name or service not known")
    started = time.monotonic()
    with pytest.raises(OperationalError):
        sb_app.send_task(
            "tests.servicebus.record", kwargs={"key": "x"}, retry=True, retry_policy={"max_retries": 2}
        )
    with pytest.raises(BrokerUnavailable):
        events.publishing.publish_events(tenant="acme", events=[{"event_id": "e1"}], correlation_id="c1")
    assert time.monotonic() - started < 30

    servicebus.default.fail_with = None
    events.publishing.publish_events(tenant="acme", events=[{"event_id": "e1"}], correlation_id="c1")
    assert _queue_state(servicebus, queue) == (1, 0)


def test_it_makes_the_readiness_check_real(
    servicebus: FakeServiceBus, sb_app: Celery, monkeypatch: pytest.MonkeyPatch
) -> None:
    import ops.health

    monkeypatch.setattr(ops.health, "app", sb_app)
    ops.health.check_broker()
    servicebus.default.fail_with = ServiceRequestError("connection refused")
    with pytest.raises(OperationalError):
        ops.health.check_broker()


def test_it_keeps_a_worker_alive_through_an_outage(
    servicebus: FakeServiceBus, sb_app: Celery, sb_worker: Any, deliveries: Deliveries
) -> None:
    namespace = servicebus.default
    namespace.fail_with = ServiceRequestError("Name or service not known")
    # The worker's receive is refused; it does not exit but reconnects, and its connection probe
    # (ops/servicebus_transport.py) is refused again and again until the namespace is back.
    wait_until(lambda: namespace.refused["receive"] >= 1, timeout=30, message="a receive refused")
    wait_until(
        lambda: namespace.refused["get_namespace_properties"] >= 2, timeout=30, message="reconnects refused"
    )
    namespace.fail_with = None
    _publish(sb_app, key="after-outage")
    wait_until(lambda: deliveries.done == ["after-outage"], timeout=30, message="consumed after the outage")
    assert sb_worker.consumer.connection is not None


def test_it_lets_monitoring_calls_fail_softly(servicebus: FakeServiceBus, sb_app: Celery) -> None:
    """Flower's calls: remote control finds no worker (no fanout), the event receiver starts; the
    queues they declare delete themselves when idle."""
    assert sb_app.control.inspect(timeout=0.3).ping() is None
    with sb_app.connection_for_read() as conn:
        receiver = sb_app.events.Receiver(conn, handlers={"*": lambda event: None})
        with pytest.raises(TimeoutError):  # what Flower's capture loop sees: nothing arrives
            receiver.capture(limit=None, timeout=0.5, wakeup=True)
    created = {
        name: arguments
        for operation, name, arguments in servicebus.default.admin_calls
        if operation == "create_queue"
    }
    monitor = {
        name: args
        for name, args in created.items()
        if name.startswith("celeryev.") or name.endswith(".celery.pidbox")
    }
    assert any(name.startswith("celeryev.") for name in monitor)
    assert any(name.endswith(".reply.celery.pidbox") for name in monitor)
    assert all(args["auto_delete_on_idle"] == timedelta(minutes=5) for args in monitor.values())
