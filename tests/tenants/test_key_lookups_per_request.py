"""A request looks its API key up once, native or SDK: one read of the key cache's version in Redis,
made by the rate-limit script once the key is in the process's cache."""

from __future__ import annotations

import json

import pytest
from django.test import Client

import events.middleware
from events.throttling import RateDecision
from tests.compat.test_sdk_api import segment, track
from tests.conftest import Actor

pytestmark = [pytest.mark.django_db, pytest.mark.core]


def test_a_native_request_reads_the_key_version_once(
    client: Client, acme: Actor, version_reads: list[str]
) -> None:
    event = {"event_type": "click", "user_id": "u-1"}
    response = client.post(
        "/api/events", data=json.dumps(event), content_type="application/json", **acme.headers
    )
    assert response.status_code == 202, response.content
    assert version_reads.count("cloudscale:tenants:version") == 1


def test_an_sdk_request_reads_the_key_version_once(
    client: Client, acme: Actor, version_reads: list[str]
) -> None:
    response = segment(client, acme.key, {"batch": [track()]})
    assert response.status_code == 200, response.content
    assert version_reads.count("cloudscale:tenants:version") == 1


@pytest.fixture
def script_version_reads(monkeypatch: pytest.MonkeyPatch) -> list[bool]:
    """The requests whose rate-limit script checked a cached key's version: whether it was current."""
    reads: list[bool] = []
    real = events.middleware.check_rate_limits

    def recorded(**kwargs: object) -> RateDecision:
        decision = real(**kwargs)  # type: ignore[arg-type]
        if kwargs.get("cached_under"):
            reads.append(not decision.stale)
        return decision

    monkeypatch.setattr(events.middleware, "check_rate_limits", recorded)
    return reads


def test_the_next_request_reads_it_in_the_rate_limit_script(
    client: Client, acme: Actor, version_reads: list[str], script_version_reads: list[bool]
) -> None:
    for _ in range(3):
        assert segment(client, acme.key, {"batch": [track()]}).status_code == 200
    assert version_reads.count("cloudscale:tenants:version") == 1  # the first request: not cached yet
    assert script_version_reads == [True, True]
