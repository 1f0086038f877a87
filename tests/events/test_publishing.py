"""Publishing a request's events: split to the broker's message size, and true receipts on a partial failure."""

from __future__ import annotations

import json
from typing import Any

import orjson
import pytest
from django.test import Client

import events.ingestion
from cloudscale_project.errors import BrokerUnavailable
from events.publishing import publish_events, split_for_broker
from tests.conftest import Actor

pytestmark = [pytest.mark.django_db, pytest.mark.core]


def _event(i: int, pad: int = 900) -> dict[str, Any]:
    return {"event_id": f"e-{i}", "event_type": "page_view", "user_id": "u", "properties": {"url": "x" * pad}}


def test_it_keeps_everything_in_one_message_without_a_size_limit() -> None:
    events = [_event(i) for i in range(500)]
    assert split_for_broker(events, 0) == [events]


def test_it_splits_a_large_batch_under_the_service_bus_limit_in_order() -> None:
    events = [_event(i) for i in range(500)]
    chunks = split_for_broker(events, 256 * 1024)
    assert len(chunks) > 1
    assert [e for chunk in chunks for e in chunk] == events
    for chunk in chunks:
        encoded = len(orjson.dumps(chunk)) * 4 / 3 + 2048
        assert encoded <= 256 * 1024


def test_a_later_message_failing_rejects_only_its_events_and_they_can_be_retried(
    client: Client, acme: Actor, settings: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    settings.BROKER_MAX_MESSAGE_BYTES = 8 * 1024  # a few events per message
    calls = {"n": 0}

    def first_message_only(**kwargs: Any) -> None:
        calls["n"] += 1
        if calls["n"] > 1:
            raise BrokerUnavailable(5)
        publish_events(**kwargs)

    monkeypatch.setattr(events.ingestion, "publish_events", first_message_only)
    batch = [_event(i, pad=1500) for i in range(10)]
    response = client.post("/api/events/batch", data=json.dumps({"events": batch}),
                           content_type="application/json", **acme.headers)  # fmt: skip
    body = response.json()
    assert response.status_code == 202
    assert 0 < body["accepted"] < 10
    rejected = {r["index"]: r["errors"][0]["field"] for r in body["rejected"]}
    assert set(rejected.values()) == {"broker"}
    assert sorted([*rejected, *range(body["accepted"])]) == list(range(10))

    monkeypatch.undo()
    retry = client.post("/api/events/batch", data=json.dumps({"events": [batch[i] for i in rejected]}),
                        content_type="application/json", **acme.headers)  # fmt: skip
    assert retry.json()["accepted"] == len(rejected)
    assert retry.json()["duplicates"] == []
