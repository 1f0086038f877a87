"""Service Bus's own dead letters → our DeadLetter table (`manage.py import_servicebus_dead_letters`), and back.

Messages reach the broker's dead-letter sub-queue the way they do in production: published by
Celery through kombu's transport, delivered and given back until the queue's max delivery count
(10) is exhausted. The import then runs against the fake's dead-letter receiver.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from contextlib import contextmanager
from io import StringIO
from typing import Any

import pytest
from azure.servicebus import ServiceBusReceiveMode
from celery import Celery
from celery.contrib.testing.worker import start_worker
from django.core.management import call_command
from django.db import DatabaseError, connection, transaction
from pytest_django.fixtures import Settings as SettingsWrapper

from events.deadletters import deadletter_requeue
from events.models import DeadLetter, StoredEvent
from ops.servicebus import dead_letters_from_message, servicebus_import_dead_letters
from tests.conftest import Actor, wait_until
from tests.events.pipeline_support import enriched_event
from tests.fakes.servicebus import (
    FakeReceivedMessage,
    FakeServiceBus,
    FakeServiceBusClient,
    StoredMessage,
    install,
    servicebus_app,
    servicebus_settings,
)

pytestmark = pytest.mark.django_db(transaction=True)  # rows must really commit before completion


@pytest.fixture
def servicebus(monkeypatch: pytest.MonkeyPatch, settings: SettingsWrapper) -> Iterator[FakeServiceBus]:
    """The fake namespace as the broker of the project's own Celery app (publish, requeue, import)."""
    import cloudscale_project.celery

    cloud = install(monkeypatch)
    values = servicebus_settings(monkeypatch, cloud.sas_url)
    app = servicebus_app(values, wait_time_seconds=0.5)
    monkeypatch.setattr(cloudscale_project.celery, "app", app)
    settings.BROKER_SCHEME = "azureservicebus"
    yield cloud
    cloudscale_project.celery.app.set_current()


@pytest.fixture
def app(servicebus: FakeServiceBus) -> Celery:
    from cloudscale_project.celery import app

    assert isinstance(app, Celery)
    return app


@pytest.fixture
def queue(app: Celery) -> str:
    return str(app.conf.task_default_queue)


def _publish_batch(app: Celery, *, tenant: str, events: list[dict[str, Any]]) -> None:
    app.send_task(
        "events.process_batch",
        kwargs={"tenant": tenant, "events": events, "correlation_id": "c0ffee00-0000-4000-8000-000000000001"},
    )


def _exhaust_deliveries(servicebus: FakeServiceBus, queue: str) -> None:
    """What a batch that crashes its worker every time gets: delivered and given back 10 times."""
    receiver = FakeServiceBusClient(servicebus.fqdn, None).get_queue_receiver(queue)
    while servicebus.default.queues[queue].active:
        for message in receiver.receive_messages(max_message_count=10, max_wait_time=0.1):
            receiver.abandon_message(message)


def _dead_letter_receiver(servicebus: FakeServiceBus, queue: str) -> Any:
    return FakeServiceBusClient(servicebus.fqdn, None).get_queue_receiver(
        queue, sub_queue="deadletter", receive_mode=ServiceBusReceiveMode.PEEK_LOCK
    )


def _dead_letter_count(servicebus: FakeServiceBus, queue: str) -> int:
    return len(servicebus.default.queues[queue].dead_letter)


# --- what a broker dead letter becomes ---------------------------------------------------------------


def test_it_turns_a_dead_lettered_batch_into_one_dead_letter_per_event(
    servicebus: FakeServiceBus, app: Celery, queue: str
) -> None:
    events = [enriched_event("acme"), enriched_event("acme", event_type="click")]
    _publish_batch(app, tenant="acme", events=events)
    _exhaust_deliveries(servicebus, queue)
    (message,) = _dead_letter_receiver(servicebus, queue).receive_messages(max_wait_time=1)

    letters = dead_letters_from_message(message)

    assert [json.loads(letter.payload) for letter in letters] == events
    assert {letter.kind for letter in letters} == {DeadLetter.Kind.EVENT}
    assert {letter.reason for letter in letters} == {"MaxDeliveryCountExceeded"}
    assert {letter.error for letter in letters} == {
        "Message could not be consumed after 10 delivery attempts."
    }
    assert {letter.attempts for letter in letters} == {10}
    assert [letter.event_id for letter in letters] == [event["event_id"] for event in events]
    assert [letter.correlation_id for letter in letters] == [event["correlation_id"] for event in events]
    assert {letter.tenant for letter in letters} == {"acme"}
    assert all(letter.received_at is not None for letter in letters)


def test_it_keeps_a_message_it_cannot_decode_byte_exact() -> None:
    stored = StoredMessage(
        sequence_number=7,
        body=b"\x00not json",
        message_id="m-7",
        enqueued_time_utc=None,  # type: ignore[arg-type]
        expires_at_utc=None,
        content_type="application/x-unknown",
        delivery_count=3,
        dead_letter_reason="SessionIdIsMissing",
        dead_letter_error_description="a sender set no session id",
    )
    (letter,) = dead_letters_from_message(FakeReceivedMessage(stored, None, settled=False))  # type: ignore[arg-type]

    assert letter.kind == DeadLetter.Kind.RAW
    assert letter.payload == b"\x00not json"
    assert letter.content_type == "application/x-unknown"
    assert (letter.reason, letter.error, letter.attempts) == (
        "SessionIdIsMissing",
        "a sender set no session id",
        3,
    )


# --- the import --------------------------------------------------------------------------------------


def test_it_imports_and_completes_the_broker_dead_letters(
    servicebus: FakeServiceBus, app: Celery, queue: str
) -> None:
    for n in range(3):
        _publish_batch(app, tenant="acme", events=[enriched_event("acme", user_id=f"u-{n}")])
    _exhaust_deliveries(servicebus, queue)
    assert _dead_letter_count(servicebus, queue) == 3

    out = StringIO()
    call_command("import_servicebus_dead_letters", "--wait", "0.2", stdout=out, stderr=StringIO())

    assert "Imported 3 Service Bus dead letter(s): 3 new dead letter(s)." in out.getvalue()
    assert _dead_letter_count(servicebus, queue) == 0
    rows = list(DeadLetter.objects.order_by("id"))
    assert [(row.reason, row.attempts, row.tenant, row.status) for row in rows] == [
        ("MaxDeliveryCountExceeded", 10, "acme", DeadLetter.Status.PENDING)
    ] * 3
    assert {json.loads(bytes(row.payload))["user_id"] for row in rows} == {"u-0", "u-1", "u-2"}


def test_it_completes_a_message_only_after_its_rows_are_committed(
    servicebus: FakeServiceBus, app: Celery, queue: str
) -> None:
    _publish_batch(app, tenant="acme", events=[enriched_event("acme")])
    _exhaust_deliveries(servicebus, queue)
    receiver = _dead_letter_receiver(servicebus, queue)

    class RolledBack(Exception):
        pass

    with pytest.raises(RolledBack), transaction.atomic():
        result = servicebus_import_dead_letters(receiver=receiver, wait_seconds=0.2)
        assert result.messages == 1
        assert _dead_letter_count(servicebus, queue) == 1, "completed before the commit"
        raise RolledBack

    assert DeadLetter.objects.count() == 0
    assert _dead_letter_count(servicebus, queue) == 1  # still there for the next import


def test_it_imports_a_message_seen_twice_once(servicebus: FakeServiceBus, app: Celery, queue: str) -> None:
    """A crash between commit and completion delivers the same dead letter to the next import."""
    events = [enriched_event("acme")]
    for _ in range(2):
        _publish_batch(app, tenant="acme", events=events)
    _exhaust_deliveries(servicebus, queue)

    result = servicebus_import_dead_letters(
        receiver=_dead_letter_receiver(servicebus, queue), wait_seconds=0.2
    )

    assert (result.messages, result.recorded) == (2, 1)
    (row,) = DeadLetter.objects.all()
    assert row.attempts == 20


def test_it_gives_messages_back_when_the_rows_cannot_be_written(
    servicebus: FakeServiceBus, app: Celery, queue: str
) -> None:
    _publish_batch(app, tenant="acme", events=[enriched_event("acme")])
    _exhaust_deliveries(servicebus, queue)

    with _database_refuses_dead_letters(), pytest.raises(DatabaseError, match="refused"):
        servicebus_import_dead_letters(receiver=_dead_letter_receiver(servicebus, queue), wait_seconds=0.2)

    # Abandoned, not left locked until its lock runs out: the next import can take it at once.
    (message,) = servicebus.default.queues[queue].dead_letter
    assert message.lock_token is None
    assert DeadLetter.objects.count() == 0


@contextmanager
def _database_refuses_dead_letters() -> Iterator[None]:
    """A real database failure on insert (a trigger), not a stand-in for our own code."""
    table = DeadLetter._meta.db_table
    with connection.cursor() as cursor:
        if connection.vendor == "sqlite":
            cursor.execute(
                f"CREATE TRIGGER refuse_dead_letters BEFORE INSERT ON {table} "
                "BEGIN SELECT RAISE(ABORT, 'refused by test'); END"
            )
        else:
            cursor.execute(
                "CREATE FUNCTION refuse_dead_letters() RETURNS trigger AS "
                "$$ BEGIN RAISE EXCEPTION 'refused by test'; END $$ LANGUAGE plpgsql"
            )
            cursor.execute(
                f"CREATE TRIGGER refuse_dead_letters BEFORE INSERT ON {table} "
                "FOR EACH ROW EXECUTE FUNCTION refuse_dead_letters()"
            )
    try:
        yield
    finally:
        with connection.cursor() as cursor:
            if connection.vendor == "sqlite":
                cursor.execute("DROP TRIGGER refuse_dead_letters")
            else:
                cursor.execute(f"DROP TRIGGER refuse_dead_letters ON {table}")
                cursor.execute("DROP FUNCTION refuse_dead_letters()")


# --- and back: requeue through the admin's service, processed by a worker ---------------------------


def test_it_requeues_an_imported_dead_letter_to_a_worker_that_stores_it(
    servicebus: FakeServiceBus, app: Celery, queue: str, acme: Actor
) -> None:
    event = enriched_event("acme")
    _publish_batch(app, tenant="acme", events=[event])
    _exhaust_deliveries(servicebus, queue)
    servicebus_import_dead_letters(receiver=_dead_letter_receiver(servicebus, queue), wait_seconds=0.2)
    (row,) = DeadLetter.objects.all()

    result = deadletter_requeue(ids=[row.pk])

    assert result.requeued == [row.pk]
    with start_worker(app, pool="solo", perform_ping_check=False, loglevel="WARNING", shutdown_timeout=15):
        wait_until(
            lambda: StoredEvent.objects.filter(tenant="acme", event_id=event["event_id"]).exists(),
            timeout=30,
            message="the requeued event stored",
        )
    row.refresh_from_db()
    assert row.status == DeadLetter.Status.REQUEUED
    assert servicebus.default.queues[queue].active == []
