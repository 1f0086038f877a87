"""`manage.py provision_servicebus` sends exactly the queue settings of docs/api.md, "Service Bus queues"."""

from __future__ import annotations

from datetime import timedelta
from io import StringIO
from typing import Any

import pytest
from azure.core.exceptions import ServiceRequestError
from celery import Celery
from django.core.management import CommandError, call_command
from pytest_django.fixtures import Settings as SettingsWrapper

from ops.servicebus import QUEUE_PROPERTIES
from tests.fakes.servicebus import FakeServiceBus, install, servicebus_app, servicebus_settings

QUEUE_SETTINGS = {
    "max_size_in_megabytes": 5120,  # 5 GB
    "default_message_time_to_live": timedelta(days=14),
    "lock_duration": timedelta(minutes=5),
    "max_delivery_count": 10,
    "dead_lettering_on_message_expiration": True,
}


@pytest.fixture
def servicebus(monkeypatch: pytest.MonkeyPatch, settings: SettingsWrapper) -> FakeServiceBus:
    """The fake namespace as the configured broker of the project's own Celery app."""
    import cloudscale_project.celery

    cloud = install(monkeypatch)
    values = servicebus_settings(monkeypatch, cloud.sas_url)
    monkeypatch.setattr(cloudscale_project.celery, "app", servicebus_app(values))
    settings.BROKER_SCHEME = "azureservicebus"
    return cloud


def _provision(*args: str) -> str:
    out = StringIO()
    call_command("provision_servicebus", *args, stdout=out)
    return out.getvalue()


def _calls(servicebus: FakeServiceBus, operation: str) -> list[tuple[str, dict[str, Any]]]:
    return [(name, args) for op, name, args in servicebus.default.admin_calls if op == operation]


def test_it_holds_the_documented_queue_settings() -> None:
    assert QUEUE_PROPERTIES == QUEUE_SETTINGS


def test_it_creates_the_queue_with_exactly_the_documented_settings(servicebus: FakeServiceBus) -> None:
    output = _provision("--queue", "events-ingestion")

    assert _calls(servicebus, "create_queue") == [("events-ingestion", QUEUE_SETTINGS)]
    assert _calls(servicebus, "update_queue") == []
    queue = servicebus.default.queues["events-ingestion"]
    assert {name: queue.properties[name] for name in QUEUE_SETTINGS} == QUEUE_SETTINGS
    assert "Service Bus queue events-ingestion: created" in output
    assert "max_delivery_count=10" in output


def test_it_changes_nothing_when_run_again(servicebus: FakeServiceBus) -> None:
    _provision("--queue", "events-ingestion")
    servicebus.default.admin_calls.clear()

    output = _provision("--queue", "events-ingestion")

    assert _calls(servicebus, "create_queue") == []
    assert _calls(servicebus, "update_queue") == []
    assert "events-ingestion: unchanged" in output


def test_it_corrects_a_queue_a_worker_created_first(
    servicebus: FakeServiceBus, settings: SettingsWrapper
) -> None:
    from cloudscale_project.celery import app

    assert isinstance(app, Celery)
    queue = app.conf.task_default_queue
    with app.connection_for_write() as conn:  # a worker or publisher declares the queue lazily
        conn.default_channel.queue_declare(queue=queue)
    lazily_created = servicebus.default.queues[queue].properties
    assert lazily_created["max_size_in_megabytes"] == 1024
    assert lazily_created["dead_lettering_on_message_expiration"] is False
    servicebus.default.admin_calls.clear()

    output = _provision()  # the configured CLOUDSCALE_QUEUE and CLOUDSCALE_OPS_QUEUE

    ((name, sent),) = _calls(servicebus, "update_queue")
    assert name == queue
    assert _calls(servicebus, "create_queue") == [(settings.OPS_QUEUE_NAME, QUEUE_SETTINGS)]
    assert {key: sent[key] for key in QUEUE_SETTINGS} == QUEUE_SETTINGS
    # Everything else is sent back as it was: an update never resets other properties.
    assert {key: value for key, value in sent.items() if key not in QUEUE_SETTINGS} == {
        key: value for key, value in lazily_created.items() if key not in QUEUE_SETTINGS
    }
    assert {key: servicebus.default.queues[queue].properties[key] for key in QUEUE_SETTINGS} == QUEUE_SETTINGS
    assert f"Service Bus queue {queue}: updated" in output
    assert "max_size_in_megabytes: 1024 -> 5120" in output


def test_it_refuses_without_a_service_bus_broker(settings: SettingsWrapper) -> None:
    settings.BROKER_SCHEME = "redis"
    with pytest.raises(CommandError, match="set it to azureservicebus://"):
        _provision()


def test_it_says_when_the_namespace_is_unreachable(servicebus: FakeServiceBus) -> None:
    servicebus.default.fail_with = ServiceRequestError("Name or service not known")
    with pytest.raises(CommandError, match="Service Bus is unreachable or refused"):
        _provision()
