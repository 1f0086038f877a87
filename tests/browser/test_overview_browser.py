"""The admin's overview charts and the dead-letter fix, in headless Chromium after real traffic.

Same set-up as test_admin_browser.py (Debian's Chromium through Playwright, a real gunicorn, a live
worker); screenshots of every step go to test-artifacts/browser/<test>/.
"""

from __future__ import annotations

import json
import urllib.error
import urllib.request
import uuid
from pathlib import Path
from typing import Any

import pytest
from django.conf import settings

from cloudscale_project.celery import app
from events.models import DeadLetter, StoredEvent
from fraud.models import FraudAlert
from ops.models import PlatformSample
from ops.services import backpressure_sample
from tenants.services import tenant_create
from tests.browser.test_admin_browser import Admin
from tests.conftest import child_env, start_worker, wait_until
from tests.events.pipeline_support import batch_kwargs, enriched_event
from tests.faults.harness import ApiServer
from tests.faults.steps import store_fault_env

pytestmark = [pytest.mark.browser, pytest.mark.e2e]

LEDGER_CHARTS = {
    "ledger-received": ("accepted", "duplicate", "rejected", "rate_limited"),
    "ledger-processing": ("accepted", "stored", "dead_lettered", "pending"),
}


def _request(url: str, key: str, body: dict[str, Any] | None = None) -> tuple[int, Any]:
    data = json.dumps(body).encode() if body is not None else None
    request = urllib.request.Request(
        url, data=data, headers={"Content-Type": "application/json", "Authorization": f"Bearer {key}"}
    )
    try:
        with urllib.request.urlopen(request, timeout=10) as response:
            return int(response.status), json.loads(response.read())
    except urllib.error.HTTPError as error:
        return int(error.code), json.loads(error.read())


def _purchase(user: str) -> dict[str, Any]:
    return {
        "event_id": str(uuid.uuid4()),
        "event_type": "purchase",
        "user_id": user,
        "properties": {"order_id": f"o-{uuid.uuid4().hex[:6]}", "amount": 20.0, "currency": "EUR"},
    }


def _charts(admin: Admin) -> dict[str, Any]:
    """Every chart's labels and points, as Chart.js holds them in the page."""
    return dict(
        admin.page.evaluate(
            """() => Object.fromEntries(Object.entries(window.cloudscaleCharts).map(([name, chart]) => [name, {
                 labels: chart.data.isoLabels,
                 series: Object.fromEntries(chart.data.datasets.map(d => [d.key, d.data]))}]))"""
        )
    )


def _wait_ready(admin: Admin, refreshes: int = 1, timeout_ms: float = 15_000) -> None:
    admin.page.wait_for_function(
        f"() => document.getElementById('overview').dataset.state === 'ready' && "
        f"Number(document.getElementById('overview').dataset.refreshes) >= {refreshes}",
        timeout=timeout_ms,
    )


def test_it_charts_the_platform_after_real_traffic(admin: Admin, server: ApiServer, tmp_path: Path) -> None:
    # The worker's store fails while the switch file exists (one attempt, then a dead letter).
    switch = tmp_path / "store-down"
    env = child_env(
        **store_fault_env(switch),
        CLOUDSCALE_PROCESS_MAX_ATTEMPTS="1",
        CLOUDSCALE_WORKER_HEARTBEAT_SECONDS="1",
    )
    env.pop("DJANGO_ALLOW_ASYNC_UNSAFE", None)
    worker = start_worker(
        tmp_path, env=env, extra_args=("-Q", f"{settings.QUEUE_NAME},{settings.OPS_QUEUE_NAME}")
    )
    try:
        key = tenant_create(slug="acme", name="Acme Corp").key
        switch.touch()
        status, lost = _request(f"{server.url}/api/events", key, _purchase("u-lost"))
        assert status == 202
        wait_until(
            lambda: DeadLetter.objects.count() == 1, timeout=60, message="a MaxRetriesExceeded dead letter"
        )
        switch.unlink()

        burst = [_purchase("u-9") for _ in range(5)]  # more than 3 purchases in 10 min: a fraud alert
        page_view = {
            "event_type": "page_view",
            "user_id": "u-1",
            "properties": {"url": "https://shop.example/"},
        }
        status, receipt = _request(
            f"{server.url}/api/events/batch", key, {"events": [*burst, page_view, {"event_type": "teleport"}]}
        )
        assert status == 202 and receipt["accepted"] == 6 and len(receipt["rejected"]) == 1
        status, again = _request(f"{server.url}/api/events/batch", key, {"events": burst[:2]})
        assert status == 202 and len(again["duplicates"]) == 2
        wait_until(
            lambda: StoredEvent.objects.filter(tenant="acme").count() == 6, timeout=60, message="stored"
        )
        wait_until(
            lambda: FraudAlert.objects.filter(tenant="acme").exists(), timeout=30, message="a fraud alert"
        )
        # Beat's sampling, three times, with the live worker's heartbeat (pool size) in shared state.
        from ops.heartbeat import workers_alive

        wait_until(lambda: any(w["pool_processes"] for w in workers_alive().values()), message="pool size")
        for _ in range(3):
            backpressure_sample(broadcast=False)
        _, ledger = _request(f"{server.url}/api/ledger", key)
        assert ledger["totals"]["pending"] == 0

        admin.login()
        assert admin.page.locator("#overview-link a").count() >= 1
        admin.page.click("#overview-link caption a")
        _wait_ready(admin)
        admin.shot("overview-all-tenants")
        assert admin.page.locator("#empty-state").is_hidden()
        assert admin.page.locator("#load-error").is_hidden()
        assert admin.page.locator("#panel-queue-depth .chart-empty").is_hidden(), (
            "samples of depth 0 are data"
        )
        charts = _charts(admin)
        assert set(charts) == {"ledger-received", "ledger-processing", "queue-depth", "concurrency",
                               "dead-letters", "fraud"}  # fmt: skip

        # Each ledger chart has a point per hour, and in the hours /api/ledger lists, the same numbers.
        for name, fields in LEDGER_CHARTS.items():
            chart = charts[name]
            assert len(chart["labels"]) == 24 and set(chart["series"]) == set(fields)
            for row in ledger["results"]:
                i = chart["labels"].index(row["hour"])
                assert {f: chart["series"][f][i] for f in fields} == {f: row[f] for f in fields}, name
            for field in fields:
                assert sum(chart["series"][field]) == ledger["totals"][field], (name, field)
        assert ledger["totals"]["accepted"] == 7 and ledger["totals"]["dead_lettered"] == 1

        samples = list(PlatformSample.objects.order_by("sampled_at", "id"))
        assert charts["queue-depth"]["series"]["queue_depth"] == [s.queue_depth for s in samples]
        assert charts["concurrency"]["series"]["concurrency_target"] == [32] * len(samples)
        assert charts["concurrency"]["series"]["pool_processes"] == [s.pool_processes for s in samples]
        assert all(s.pool_processes and s.pool_processes >= 1 for s in samples)
        assert sum(charts["dead-letters"]["series"]["MaxRetriesExceeded"]) == 1
        fraud = charts["fraud"]["series"]["alerts"][charts["fraud"]["labels"].index("purchase_velocity")]
        assert fraud == FraudAlert.objects.filter(rule="purchase_velocity").count() >= 1
        # The numbers beside the charts say the same.
        numbers = admin.page.locator("#numbers-ledger-processing tr[data-key=stored] td").inner_text()
        assert int(numbers) == ledger["totals"]["stored"] == 6
        assert admin.page.locator("#warnings-none").is_visible()  # this traffic had no SDK warnings

        # One tenant's view, and the page refreshes itself with new data.
        admin.page.select_option("#tenant-select", "acme")
        _wait_ready(admin)
        admin.shot("overview-acme")
        backpressure_sample(broadcast=False)
        admin.page.evaluate("() => { document.getElementById('overview').dataset.refreshes = '0'; }")
        _wait_ready(admin, timeout_ms=45_000)  # the page's own refresh (every 30 s)
        assert len(_charts(admin)["queue-depth"]["series"]["queue_depth"]) == len(samples) + 1
        admin.shot("overview-refreshed")
        assert lost["event_id"] == DeadLetter.objects.get().event_id
    finally:
        switch.unlink(missing_ok=True)
        worker.stop()


def test_an_empty_platform_shows_what_to_do(admin: Admin) -> None:
    admin.login()
    admin.open("/admin/overview/")
    _wait_ready(admin)
    admin.shot("empty-overview")
    assert admin.page.locator("#empty-state").is_visible()
    assert "curl -sS -X POST" in admin.page.inner_text("#curl-line")
    assert admin.page.locator("#panel-ledger-received .chart-empty").is_visible()


def test_it_fixes_a_dead_letter_and_the_requeued_event_is_stored(
    admin: Admin, server: ApiServer, tmp_path: Path
) -> None:
    env = child_env()
    env.pop("DJANGO_ALLOW_ASYNC_UNSAFE", None)
    worker = start_worker(tmp_path, env=env)
    try:
        tenant_create(slug="acme", name="Acme Corp")
        bad = enriched_event(event_type="pageview")  # a producer that misspells the type
        app.send_task("events.process_batch", kwargs=batch_kwargs("acme", [bad]), queue=settings.QUEUE_NAME)
        wait_until(
            lambda: DeadLetter.objects.count() == 1, timeout=60, message="an UnknownEventType dead letter"
        )
        letter = DeadLetter.objects.get()

        admin.login()
        admin.open(f"/admin/events/deadletter/{letter.pk}/change/")
        editor = admin.page.locator("#id_fixed_event")
        fixed = json.loads(editor.input_value())
        assert fixed["event_type"] == "pageview"
        editor.fill(json.dumps({**fixed, "event_type": "search"}, indent=2))
        admin.page.click("input[name=_fix_and_requeue]")
        admin.page.wait_for_selector(".errorlist")
        admin.shot("fix-refused")
        assert "properties.query: Field required" in admin.page.inner_text(".errorlist")

        admin.page.locator("#id_fixed_event").fill(json.dumps({**fixed, "event_type": "page_view"}, indent=2))
        admin.shot("fix-edited")
        admin.page.click("input[name=_fix_and_requeue]")
        admin.page.wait_for_selector("ul.messagelist")
        admin.shot("fixed-and-requeued")
        assert any("Fixed and requeued dead letter" in m for m in admin.messages()), admin.messages()
        wait_until(
            lambda: StoredEvent.objects.filter(tenant="acme", event_id=bad["event_id"]).exists(),
            timeout=60,
            message="the fixed event stored by the live worker",
        )
        admin.page.reload()
        admin.shot("list-after-processing")
        assert (
            admin.page.locator("#result_list td.field-after_requeue").first.inner_text().strip() == "stored"
        )
        admin.open(f"/admin/events/deadletter/{letter.pk}/change/")
        admin.shot("audit-trail")
        trail = admin.page.inner_text(".field-audit_trail")
        assert 'event_type "pageview" → "page_view"' in trail and "stored by the event store" in trail
        assert '"pageview"' in admin.page.inner_text(".field-payload_view"), "the original is kept"
    finally:
        worker.stop()
