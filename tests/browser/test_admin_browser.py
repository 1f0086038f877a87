"""The admin in headless Chromium, against a real gunicorn and the test database.

Debian's `chromium` (installed by `.ci/run`), driven by Playwright with `executable_path`: no browser
is ever downloaded. Without Chromium these tests skip with the reason; under CI=true they fail.
Every step leaves a screenshot in test-artifacts/browser/.
"""

from __future__ import annotations

import importlib.util
import json
import os
import re
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from django.conf import settings
from django.contrib.auth import get_user_model

from cloudscale_project.celery import app
from events.models import DeadLetter, StoredEvent
from fraud.models import FraudRuleSetting
from fraud.rules import Rule
from fraud.selectors import fraud_rule_configs
from tenants.models import Tenant
from tenants.services import tenant_create
from tests.conftest import IN_CI, ROOT, child_env, start_worker, wait_until
from tests.events.pipeline_support import batch_kwargs, enriched_event
from tests.faults.harness import ApiServer
from tests.faults.steps import store_fault_env

pytestmark = [pytest.mark.browser, pytest.mark.e2e]

CHROMIUM = Path(os.environ.get("CLOUDSCALE_CHROMIUM", "/usr/bin/chromium"))
CHROMIUM_ARGS = [
    "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
    "--disable-background-networking", "--disable-component-update", "--disable-sync",
]  # fmt: skip
ARTIFACTS = ROOT / "test-artifacts" / "browser"
ADMIN_USER, ADMIN_PASSWORD = "ops-admin", "browser-test-password-1"


def _require_chromium() -> None:
    problem = None
    if not (CHROMIUM.is_file() and os.access(CHROMIUM, os.X_OK)):
        problem = f"Chromium is not installed at {CHROMIUM} (apt-get install chromium chromium-driver)"
    elif importlib.util.find_spec("playwright") is None:
        problem = "the playwright package is not installed (pip install -e '.[test]')"
    if problem is None:
        return
    if IN_CI:
        pytest.fail(f"{problem}; CI=true: the browser tests must run", pytrace=False)
    pytest.skip(problem)


@pytest.fixture(scope="module")
def chromium() -> Iterator[Any]:
    _require_chromium()
    from playwright.sync_api import sync_playwright

    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=str(CHROMIUM), args=CHROMIUM_ARGS)
        yield browser
        browser.close()


@pytest.fixture
def server(transactional_db: None, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[ApiServer]:
    api = ApiServer(tmp_path)  # its environment is taken now, without the switch below
    # Playwright's sync API runs an event loop in this thread, which Django takes for an async
    # context; the test's own ORM calls are still plain synchronous code between browser steps.
    monkeypatch.setenv("DJANGO_ALLOW_ASYNC_UNSAFE", "true")
    get_user_model().objects.create_superuser(ADMIN_USER, "ops@example.com", ADMIN_PASSWORD)
    api.start()
    yield api
    api.stop()


class Admin:
    """One browser tab on the admin, taking a numbered screenshot at each step."""

    def __init__(self, page: Any, base_url: str, test_name: str) -> None:
        self.page = page
        self.base_url = base_url
        self.folder = ARTIFACTS / test_name
        self.folder.mkdir(parents=True, exist_ok=True)
        self.step = 0

    def shot(self, name: str) -> Path:
        self.step += 1
        path = self.folder / f"{self.step:02d}-{name}.png"
        self.page.screenshot(path=str(path), full_page=True)
        return path

    def open(self, path: str) -> None:
        self.page.goto(f"{self.base_url}{path}")

    def login(self) -> None:
        self.open("/admin/")
        self.page.fill("#id_username", ADMIN_USER)
        self.page.fill("#id_password", ADMIN_PASSWORD)
        self.shot("login-form")
        self.page.click("input[type=submit]")
        self.page.wait_for_selector("#site-name")

    def messages(self) -> list[str]:
        return [m.strip() for m in self.page.locator("ul.messagelist li").all_inner_texts()]


@pytest.fixture
def admin(chromium: Any, server: ApiServer, request: pytest.FixtureRequest) -> Iterator[Admin]:
    context = chromium.new_context(viewport={"width": 1400, "height": 900})
    page = context.new_page()
    page.set_default_timeout(15_000)
    yield Admin(page, server.url, request.node.name)
    context.close()


def test_it_logs_in_to_the_admin(admin: Admin) -> None:
    admin.open("/admin/")
    assert "/admin/login/" in admin.page.url
    admin.login()
    admin.shot("dashboard")

    assert admin.page.url.rstrip("/").endswith("/admin")
    body = admin.page.inner_text("#content")
    for section in ("Tenants", "Dead letters", "Fraud rule settings"):
        assert section in body


def test_it_requeues_a_dead_letter_found_by_reason_and_the_event_is_stored(
    admin: Admin, server: ApiServer, tmp_path: Path
) -> None:
    # A real MaxRetriesExceeded dead letter: the worker's store is "down" (the fault switch file)
    # and it gives up after one attempt. A second dead letter of another reason is the haystack.
    switch = tmp_path / "store-down"
    switch.touch()
    env = child_env(**store_fault_env(switch), CLOUDSCALE_PROCESS_MAX_ATTEMPTS="1")
    env.pop("DJANGO_ALLOW_ASYNC_UNSAFE", None)  # only this test process needs it
    worker = start_worker(tmp_path, env=env)
    try:
        issued = tenant_create(slug="acme", name="Acme Corp")
        event_id = _post_event(server.url, issued.key)
        unknown = enriched_event(event_type="teleport")
        app.send_task(
            "events.process_batch", kwargs=batch_kwargs("acme", [unknown]), queue=settings.QUEUE_NAME
        )
        wait_until(lambda: DeadLetter.objects.count() == 2, timeout=60, message="two dead letters")
        switch.unlink()  # the store is back

        admin.login()
        admin.open("/admin/events/deadletter/")
        admin.shot("dead-letters")
        assert admin.page.locator("#result_list tbody tr").count() == 2
        admin.page.click("#changelist-filter a[href*='reason__exact=MaxRetriesExceeded']")
        admin.page.wait_for_url(re.compile(r"reason__exact=MaxRetriesExceeded"))
        admin.shot("filtered-by-reason")
        rows = admin.page.locator("#result_list tbody tr")
        assert rows.count() == 1
        assert event_id in rows.first.inner_text()

        rows.first.locator("input.action-select").check()
        admin.page.select_option("select[name=action]", "requeue")
        admin.shot("requeue-selected")
        admin.page.click("button[name=index]")
        admin.page.wait_for_selector("ul.messagelist")
        admin.shot("requeued")
        assert "Requeued 1 dead letter(s); skipped 0." in admin.messages()

        wait_until(
            lambda: StoredEvent.objects.filter(tenant="acme", event_id=event_id).exists(),
            timeout=60,
            message="the requeued event stored by the live worker",
        )
        admin.page.reload()
        admin.shot("after-processing")
        status = admin.page.locator("#result_list tbody tr td.field-status").first.inner_text()
        assert status.strip() == DeadLetter.Status.REQUEUED.label
        letter = DeadLetter.objects.get(event_id=event_id)
        assert letter.status == DeadLetter.Status.REQUEUED
        assert DeadLetter.objects.get(reason="UnknownEventType").status == DeadLetter.Status.PENDING
    finally:
        switch.unlink(missing_ok=True)
        worker.stop()


def test_it_shows_a_new_tenants_key_exactly_once(admin: Admin, server: ApiServer) -> None:
    admin.login()
    admin.open("/admin/tenants/tenant/add/")
    admin.page.fill("#id_slug", "initech")
    admin.page.fill("#id_name", "Initech")
    admin.shot("add-tenant")
    admin.page.click("input[name=_save]")
    admin.page.wait_for_selector("ul.messagelist")
    admin.shot("key-shown")

    notices = [m for m in admin.messages() if "shown once" in m]
    assert len(notices) == 1, admin.messages()
    key = notices[0].rsplit(": ", 1)[1].strip()
    assert admin.page.content().count(key) == 1
    # The key shown is a working key of the new tenant.
    ledger = _get(f"{server.url}/api/ledger", key)
    assert ledger["totals"]["received"] == 0
    assert Tenant.objects.get(slug="initech").api_keys.filter(revoked_at__isnull=True).count() == 1

    admin.page.reload()
    admin.shot("after-reload")
    assert not [m for m in admin.messages() if "shown once" in m]
    assert key not in admin.page.content()
    admin.page.click("#result_list a:text-is('initech')")
    admin.page.wait_for_selector("#tenant_form")
    admin.shot("tenant-detail")
    assert key not in admin.page.content()


def test_it_saves_an_edited_fraud_threshold(admin: Admin) -> None:
    tenant_create(slug="acme", name="Acme Corp")
    admin.login()
    admin.open("/admin/fraud/fraudrulesetting/add/?rule=purchase_velocity")
    # The form starts from the rule's default: more than 3 purchases in 10 minutes.
    assert admin.page.input_value("#id_threshold") == "3"
    assert admin.page.input_value("#id_window_seconds") == "600"
    admin.page.select_option("#id_tenant", label="acme")
    admin.page.fill("#id_threshold", "5")
    admin.shot("add-setting")
    admin.page.click("input[name=_save]")
    admin.page.wait_for_selector("ul.messagelist")
    admin.shot("setting-added")

    threshold = admin.page.locator("#result_list input[name$='-threshold']").first
    assert threshold.input_value() == "5"
    threshold.fill("8")
    admin.shot("threshold-edited")
    admin.page.click("#changelist-form input[name=_save]")
    admin.page.wait_for_selector("ul.messagelist")
    admin.shot("threshold-saved")
    assert any("was changed successfully" in m for m in admin.messages()), admin.messages()

    admin.page.reload()
    assert admin.page.locator("#result_list input[name$='-threshold']").first.input_value() == "8"
    setting = FraudRuleSetting.objects.get(tenant__slug="acme", rule=Rule.PURCHASE_VELOCITY)
    assert (setting.threshold, setting.window_seconds) == (8, 600)
    # The rules read it: acme now alerts on the ninth purchase in 10 minutes.
    assert fraud_rule_configs(tenant="acme")[Rule.PURCHASE_VELOCITY].threshold == 8


# --- helpers -----------------------------------------------------------------------------------------


def _post_event(base_url: str, key: str) -> str:
    body = json.dumps(
        {
            "event_type": "purchase",
            "user_id": "u-7",
            "properties": {"order_id": "o-1", "amount": 59.9, "currency": "EUR"},
        }
    ).encode()
    request = urllib.request.Request(
        f"{base_url}/api/events",
        data=body,
        headers={"Content-Type": "application/json", "Authorization": f"Bearer {key}"},
    )
    with urllib.request.urlopen(request, timeout=10) as response:
        assert response.status == 202
        return str(json.loads(response.read())["event_id"])


def _get(url: str, key: str) -> Any:
    request = urllib.request.Request(url, headers={"Authorization": f"Bearer {key}"})
    with urllib.request.urlopen(request, timeout=10) as response:
        assert response.status == 200
        return json.loads(response.read())
