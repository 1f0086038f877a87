"""`manage.py status`: one report of what is up and whether work flows; non-zero exit when it does not."""

from __future__ import annotations

import io
import json
import time
from collections.abc import Sequence
from datetime import timedelta

import pytest
from django.conf import settings
from django.core.management import call_command
from django.utils import timezone

from cloudscale_project.celery import app
from cloudscale_project.metrics import platform_set_labeled_gauge
from events.deadletters import DeadLetterInput, deadletter_record_many
from events.ledger import ledger_record
from events.stores.base import Event
from ops.heartbeat import HEARTBEAT_GAUGE, POOL_GAUGE
from ops.models import PlatformSample
from ops.services import backpressure_sample
from tests.conftest import Actor
from tests.events.pipeline_support import batch_kwargs, enriched_event

pytestmark = [pytest.mark.django_db, pytest.mark.core]


def status(*args: str) -> tuple[int, str]:
    out = io.StringIO()
    try:
        call_command("status", *args, stdout=out, stderr=io.StringIO())
    except SystemExit as exit_:
        return int(exit_.code or 0), out.getvalue()
    return 0, out.getvalue()


def a_worker_is_alive(name: str = "w1@host", pool: int = 4) -> None:
    """What ops.heartbeat.WorkerHeartbeat writes from a live worker every WORKER_HEARTBEAT_SECONDS."""
    platform_set_labeled_gauge(HEARTBEAT_GAUGE, {"worker": name}, time.time())
    platform_set_labeled_gauge(POOL_GAUGE, {"worker": name}, pool)


def publish(events: Sequence[Event]) -> None:
    app.send_task("events.process_batch", kwargs=batch_kwargs("acme", events), queue=settings.QUEUE_NAME)


def test_it_reports_everything_as_json_and_exits_zero_when_all_is_well(acme: Actor) -> None:
    a_worker_is_alive(pool=4)
    now = timezone.now()
    ledger_record(tenant="acme", received_at=now, counts={"accepted": 3, "rejected": 1})
    deadletter_record_many(
        letters=[DeadLetterInput(reason="UnknownEventType", tenant="acme", payload=b'{"event_type":"x"}')]
    )
    waiting = enriched_event(received_at=(now - timedelta(seconds=90)).isoformat().replace("+00:00", "Z"))
    publish([waiting])
    backpressure_sample(broadcast=False)

    code, out = status("--json")

    report = json.loads(out)
    assert code == 0, report["problems"]
    assert report["ok"] is True and report["problems"] == []
    assert set(report["checks"].values()) == {"ok"}
    assert set(report["checks"]) == {"database", "broker", "event_store", "shared_state"}
    assert report["queue"]["depth"] == 1
    assert 85 <= report["queue"]["oldest_message_age_seconds"] <= 150
    assert report["workers"]["w1@host"]["alive"] is True
    assert report["workers"]["w1@host"]["pool_processes"] == 4
    assert report["concurrency"] == {"target": 32, "tier": "short queue (depth < 1,000)"}
    assert report["last_hour"]["accepted"] == 3 and report["last_hour"]["pending"] == 3
    assert report["dead_letters_pending_by_reason"] == {"UnknownEventType": 1}


def test_it_exits_non_zero_when_pending_keeps_growing(acme: Actor) -> None:
    a_worker_is_alive()
    ledger_record(tenant="acme", received_at=timezone.now(), counts={"accepted": 4})
    for _ in range(4):  # four beat samples, the queue one message deeper each time
        publish([enriched_event()])
        backpressure_sample(broadcast=False)

    code, out = status()

    assert code == 1
    assert "pending keeps growing: queue depth 1 → 2 → 3 → 4" in out


def test_it_exits_non_zero_when_no_worker_is_alive_or_beat_is_not_sampling(acme: Actor) -> None:
    platform_set_labeled_gauge(HEARTBEAT_GAUGE, {"worker": "gone@host"}, time.time() - 3600)
    PlatformSample.objects.create(
        sampled_at=timezone.now() - timedelta(minutes=10), queue_depth=0, concurrency_target=32
    )

    code, out = status()

    assert code == 1
    assert "gone@host" in out and "DOWN" in out
    assert "no worker is alive" in out
    assert "beat is not sampling the queue" in out


def test_it_exits_non_zero_when_the_oldest_message_is_too_old(acme: Actor) -> None:
    a_worker_is_alive()
    backpressure_sample(broadcast=False)
    old = (timezone.now() - timedelta(minutes=20)).isoformat().replace("+00:00", "Z")
    publish([enriched_event(received_at=old)])

    code, out = status("--max-age", "600")

    assert code == 1
    assert "the oldest waiting message is 1200 s old (limit 600 s)" in out


def test_its_help_has_an_example(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit):
        call_command("status", "--help")
    assert "manage.py status --json" in capsys.readouterr().out
