"""Beat's backpressure sample: real queue depth → gauge → target in shared state → recorded change."""

from __future__ import annotations

import pytest
import redis
from django.conf import settings
from django.test import Client

from cloudscale_project.celery import app
from cloudscale_project.metrics import render_metrics
from ops.models import ConcurrencyChange
from ops.services import TARGET_KEY, backpressure_sample, concurrency_target_apply, concurrency_target_get
from ops.tasks import sample_queue_depth

pytestmark = [pytest.mark.django_db, pytest.mark.core]


def _publish(n: int) -> None:
    with app.producer_or_acquire() as producer:
        for i in range(n):
            app.send_task(
                "events.process_batch",
                kwargs={"tenant": "acme", "events": [{"event_id": f"e-{i}"}], "correlation_id": "c"},
                queue=settings.QUEUE_NAME,
                producer=producer,
            )


def _metric_line(name: str) -> str:
    lines = [line for line in render_metrics().decode().splitlines() if line.startswith(name + " ")]
    assert len(lines) == 1, lines
    return lines[0]


def test_it_sets_the_first_target_and_exports_both_gauges() -> None:
    _publish(3)
    sample = backpressure_sample(broadcast=False)
    assert (sample.depth, sample.old_target, sample.target) == (3, None, 32)
    assert concurrency_target_get() == 32
    change = ConcurrencyChange.objects.get()
    assert (change.queue_depth, change.old_target, change.new_target) == (3, None, 32)
    assert change.reason == "depth 3 < 1000"
    assert _metric_line("cloudscale_queue_depth") == "cloudscale_queue_depth 3.0"
    assert _metric_line("cloudscale_worker_concurrency_target") == "cloudscale_worker_concurrency_target 32.0"


def test_it_records_only_changes() -> None:
    backpressure_sample(broadcast=False)
    backpressure_sample(broadcast=False)
    assert ConcurrencyChange.objects.count() == 1


def test_it_holds_the_target_in_the_band_and_returns_to_32_when_the_queue_drains() -> None:
    concurrency_target_apply(target=4, depth=12_000, reason="depth 12000 > 10000", broadcast=False)
    _publish(1_200)
    held = backpressure_sample(broadcast=False)
    assert (held.depth, held.target, held.changed) == (1_200, 4, False)
    app.connection_for_write().default_channel.queue_purge(settings.QUEUE_NAME)
    drained = backpressure_sample(broadcast=False)
    assert (drained.depth, drained.old_target, drained.target) == (0, 4, 32)
    assert list(ConcurrencyChange.objects.values_list("old_target", "new_target").order_by("id")) == [
        (None, 4),
        (4, 32),
    ]


def test_it_remembers_the_target_from_the_history_when_shared_state_was_lost(
    state_redis: redis.Redis,
) -> None:
    concurrency_target_apply(target=16, depth=6_000, reason="deep", broadcast=False)
    state_redis.delete(TARGET_KEY)
    _publish(1_200)
    sample = backpressure_sample(broadcast=False)
    assert (sample.old_target, sample.target, sample.changed) == (16, 16, False)
    assert concurrency_target_get() == 16  # republished for the workers
    assert ConcurrencyChange.objects.count() == 1


def test_it_broadcasts_a_change_where_the_broker_can() -> None:
    assert settings.BROKER_SCHEME != "azureservicebus"
    backpressure_sample()
    assert ConcurrencyChange.objects.get().broadcast is True


def test_it_runs_as_a_beat_task_on_the_ops_queue() -> None:
    entry = settings.CELERY_BEAT_SCHEDULE["ops.sample-queue-depth"]
    assert entry["task"] == "ops.sample_queue_depth"
    assert entry["schedule"] == settings.QUEUE_DEPTH_SAMPLE_SECONDS == 30.0
    assert entry["options"]["queue"] == settings.OPS_QUEUE_NAME != settings.QUEUE_NAME  # type: ignore[index]
    sample_queue_depth()
    assert concurrency_target_get() == 32


def test_it_lists_the_changes_read_only_in_admin(admin_client: Client) -> None:
    concurrency_target_apply(target=4, depth=12_345, reason="depth 12345 > 10000", broadcast=False)
    change = ConcurrencyChange.objects.get()
    listing = admin_client.get("/admin/ops/concurrencychange/")
    assert listing.status_code == 200
    assert b"depth 12345 &gt; 10000" in listing.content  # HTML-escaped reason
    assert admin_client.get("/admin/ops/concurrencychange/add/").status_code == 403
    detail = admin_client.get(f"/admin/ops/concurrencychange/{change.pk}/change/")
    assert detail.status_code == 200 and b'name="_save"' not in detail.content
