"""Operators read ingestion warnings in the admin: listed, filtered, searched, never edited."""

from __future__ import annotations

import pytest
from django.test import Client

from cloudscale_project.timeutil import utcnow
from compat.models import IngestionWarning

pytestmark = pytest.mark.django_db


@pytest.fixture
def warnings() -> None:
    common = {"time": utcnow(), "field": "userId", "message": "no user id"}
    IngestionWarning.objects.create(tenant="acme", protocol="segment", event_name="Video Played",
                                    event_id="m-1", code="missing_user_id", **common)  # fmt: skip
    IngestionWarning.objects.create(tenant="globex", protocol="posthog", event_name="Level Finished",
                                    event_id="m-2", code="not_mapped", **common)  # fmt: skip


def test_it_lists_filters_and_searches_warnings(admin_client: Client, warnings: None) -> None:
    listing = admin_client.get("/admin/compat/ingestionwarning/").content.decode()
    assert "Video Played" in listing and "Level Finished" in listing
    by_protocol = admin_client.get(
        "/admin/compat/ingestionwarning/", {"protocol": "posthog"}
    ).content.decode()
    assert "Level Finished" in by_protocol and "Video Played" not in by_protocol
    searched = admin_client.get("/admin/compat/ingestionwarning/", {"q": "m-1"}).content.decode()
    assert "Video Played" in searched and "Level Finished" not in searched


def test_warnings_are_read_only(admin_client: Client, warnings: None) -> None:
    warning = IngestionWarning.objects.get(event_id="m-1")
    assert admin_client.get("/admin/compat/ingestionwarning/add/").status_code == 403
    page = admin_client.get(f"/admin/compat/ingestionwarning/{warning.pk}/change/")
    assert page.status_code == 200 and 'name="_save"' not in page.content.decode()
