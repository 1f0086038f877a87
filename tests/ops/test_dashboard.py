"""The admin's overview page and its JSON endpoints (the charts themselves: tests/browser)."""

from __future__ import annotations

from datetime import timedelta

import pytest
from django.contrib.auth.models import User
from django.test import Client
from django.utils import timezone

from cloudscale_project.timeutil import hour_floor
from events.deadletters import DeadLetterInput, deadletter_record_many
from events.ledger import ledger_record
from ops.dashboard import dashboard_warnings
from ops.models import PlatformSample
from ops.services import platform_sample_record
from tests.conftest import Actor

pytestmark = [pytest.mark.django_db, pytest.mark.core]

ENDPOINTS = ("ledger.json", "platform.json", "dead-letters.json", "fraud.json", "warnings.json")


def test_it_is_for_staff_only(client: Client) -> None:
    for path in ("", *ENDPOINTS):
        assert client.get(f"/admin/overview/{path}").status_code == 302, path
    User.objects.create_user("visitor", password="pw-visitor-1")
    client.login(username="visitor", password="pw-visitor-1")
    for path in ("", *ENDPOINTS):
        response = client.get(f"/admin/overview/{path}")
        assert response.status_code == 302 and "/admin/login/" in response["Location"], path


def test_the_admin_index_links_to_it(admin_client: Client) -> None:
    assert 'href="/admin/overview/"' in admin_client.get("/admin/").text


def test_an_empty_platform_page_says_how_to_send_an_event(admin_client: Client) -> None:
    page = admin_client.get("/admin/overview/")
    assert page.status_code == 200
    assert "curl -sS -X POST http://testserver/api/events" in page.text
    assert "python manage.py tenant create" in page.text  # no tenant yet
    assert "/static/ops/vendor/chart.umd.min.js" in page.text and "cdn" not in page.text.lower()


def test_the_ledger_endpoint_has_every_hour_and_sums_tenants(
    admin_client: Client, acme: Actor, globex: Actor
) -> None:
    now = timezone.now()
    ledger_record(tenant="acme", received_at=now, counts={"accepted": 5, "duplicate": 1})
    ledger_record(
        tenant="globex", received_at=now - timedelta(hours=2), counts={"accepted": 2, "rejected": 3}
    )

    everyone = admin_client.get("/admin/overview/ledger.json").json()
    only_acme = admin_client.get("/admin/overview/ledger.json", {"tenant": "acme"}).json()

    assert len(everyone["hours"]) == 24
    assert everyone["hours"][-1] == hour_floor(now).strftime("%Y-%m-%dT%H:00:00Z")
    assert everyone["series"]["accepted"][-1] == 5 and everyone["series"]["accepted"][-3] == 2
    assert everyone["series"]["rejected"][-3] == 3
    assert everyone["totals"]["received"] == 11 and everyone["totals"]["pending"] == 7
    assert only_acme["totals"]["received"] == 6 and sum(only_acme["series"]["rejected"]) == 0


def test_the_platform_endpoint_shows_beat_samples(admin_client: Client) -> None:
    platform_sample_record(depth=12, target=32)
    platform_sample_record(depth=7, target=32)

    data = admin_client.get("/admin/overview/platform.json").json()

    assert data["queue_depth"] == [12, 7] and data["concurrency_target"] == [32, 32]
    assert data["current"]["queue_depth"] == 7 and data["current"]["max_queue_depth"] == 12


def test_beat_samples_are_kept_for_a_bounded_time() -> None:
    now = timezone.now()
    platform_sample_record(depth=1, target=32, now=now - timedelta(hours=49))
    platform_sample_record(depth=2, target=32, now=now)
    assert list(PlatformSample.objects.values_list("queue_depth", flat=True)) == [2]


def test_the_dead_letter_endpoint_counts_by_reason(admin_client: Client) -> None:
    deadletter_record_many(
        letters=[
            DeadLetterInput(reason="UnknownEventType", tenant="acme", payload=b'{"a":1}'),
            DeadLetterInput(reason="UnknownEventType", tenant="acme", payload=b'{"a":2}'),
            DeadLetterInput(reason="MissingEventType", tenant="globex", payload=b'{"a":3}'),
        ]
    )
    data = admin_client.get("/admin/overview/dead-letters.json", {"tenant": "acme"}).json()
    assert data["totals"] == {"UnknownEventType": 2}
    assert data["series"]["UnknownEventType"][-1] == 2
    assert data["pending_by_reason"] == {"UnknownEventType": 2}


def test_it_shows_the_newest_ingestion_warnings_of_the_tenant(admin_client: Client) -> None:
    from compat.models import IngestionWarning

    assert dashboard_warnings(tenant=None) == {
        "available": True,
        "columns": dashboard_warnings(tenant=None)["columns"],
        "results": [],
    }
    for tenant, name in (("acme", "older"), ("globex", "other"), ("acme", "newer")):
        IngestionWarning.objects.create(
            tenant=tenant, time=timezone.now(), protocol="segment", event_name=name, code="missing_user_id",
            message="neither userId nor anonymousId",
        )  # fmt: skip
    data = admin_client.get("/admin/overview/warnings.json", {"tenant": "acme"}).json()
    assert data["available"] is True
    assert [row["event_name"] for row in data["results"]] == ["newer", "older"]
    assert "code" in data["columns"] and "message" in data["columns"]
