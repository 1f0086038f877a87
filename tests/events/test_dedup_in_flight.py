"""A repeat of an event whose publish is not confirmed yet is refused (503), never called a duplicate.

Found by the fault suite (tests/faults/): with the broker down, a failed publish could not release
its reservation; the client's retry after the restart was answered "duplicate" with a 202 for an
event that never reached the broker.
"""

from __future__ import annotations

import json
import uuid
from typing import Any

import pytest
from django.test import Client

from events.dedup import Claim, confirm_event_ids, reserve_event_ids
from tests.conftest import Actor

pytestmark = [pytest.mark.django_db, pytest.mark.core]

PURCHASE = {
    "event_type": "purchase",
    "user_id": "u-42",
    "properties": {"order_id": "o-9", "amount": 59.90, "currency": "EUR"},
}


def post_batch(client: Client, actor: Actor, events: list[dict[str, Any]]) -> Any:
    return client.post(
        "/api/events/batch",
        data=json.dumps({"events": events}),
        content_type="application/json",
        **actor.headers,
    )


def test_it_refuses_a_repeat_while_the_first_publish_is_unconfirmed(client: Client, acme: Actor) -> None:
    in_flight = str(uuid.uuid4())
    assert reserve_event_ids(tenant="acme", event_ids=[in_flight]) == [Claim.NEW]  # another request

    other = {**PURCHASE, "event_id": str(uuid.uuid4())}
    refused = post_batch(client, acme, [other, {**PURCHASE, "event_id": in_flight}])
    assert refused.status_code == 503
    assert refused.json()["error"]["code"] == "broker_unavailable"
    assert int(refused["Retry-After"]) >= 1

    confirm_event_ids(tenant="acme", event_ids=[in_flight])  # the other request's publish succeeded
    retry = post_batch(client, acme, [other, {**PURCHASE, "event_id": in_flight}])
    assert retry.status_code == 202
    body = retry.json()
    # The refused request released its own reservation: `other` is accepted, not a duplicate.
    assert body["event_ids"] == [other["event_id"]]
    assert body["duplicates"] == [{"index": 1, "event_id": in_flight}]


def test_it_keeps_a_repeat_within_one_request_a_duplicate(client: Client, acme: Actor) -> None:
    event = {**PURCHASE, "event_id": str(uuid.uuid4())}
    response = post_batch(client, acme, [event, event])
    assert response.status_code == 202
    assert response.json()["event_ids"] == [event["event_id"]]
    assert response.json()["duplicates"] == [{"index": 1, "event_id": event["event_id"]}]


def test_it_tells_each_claim_apart() -> None:
    new, confirmed, reserved = (str(uuid.uuid4()) for _ in range(3))
    reserve_event_ids(tenant="acme", event_ids=[confirmed, reserved])
    confirm_event_ids(tenant="acme", event_ids=[confirmed])

    claims = reserve_event_ids(tenant="acme", event_ids=[new, confirmed, reserved, new, reserved])
    assert claims == [Claim.NEW, Claim.DUPLICATE, Claim.IN_FLIGHT, Claim.DUPLICATE, Claim.IN_FLIGHT]
