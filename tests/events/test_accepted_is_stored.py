"""Property: every event the API accepts (202) is stored by the worker; every other one is refused with
a field path. Events are drawn over the event schema (events/schemas.py), edges included: any
Unicode (NUL too), times from year 1 to 9999 with any offset, deep and wide properties."""

from __future__ import annotations

import json
import string
from typing import Any

import pytest
from django.test import Client
from hypothesis import HealthCheck, Phase, given, settings
from hypothesis import strategies as st

from events.models import DeadLetter
from events.schemas import EVENT_ID_PATTERN, EVENT_TYPES
from events.stores import get_event_store
from events.tasks import process_batch
from tests.conftest import Actor, purge_queue
from tests.events.pipeline_support import take_one_message
from tests.events.strategies import short_text, text, time_texts, with_nul

pytestmark = [pytest.mark.django_db, pytest.mark.core]

EXAMPLES = 60

json_values = st.recursive(
    st.none()
    | st.booleans()
    | st.integers(min_value=-(2**63), max_value=2**63 - 1)
    | st.floats(allow_nan=False, allow_infinity=False)
    | text
    | with_nul,
    lambda children: st.lists(children, max_size=3) | st.dictionaries(text, children, max_size=3),
    max_leaves=12,
)
extra_properties = st.dictionaries(text, json_values, max_size=4)
quantities = st.one_of(
    st.integers(min_value=-1, max_value=10**6), st.floats(allow_nan=False, allow_infinity=False)
)
prices = st.one_of(st.floats(min_value=-1, max_value=1e12, allow_nan=False), st.integers(0, 10**9))
REQUIRED: dict[str, st.SearchStrategy[dict[str, Any]]] = {
    "page_view": st.fixed_dictionaries({"url": short_text}),
    "search": st.fixed_dictionaries({"query": short_text}),
    "add_to_cart": st.fixed_dictionaries({"product_id": short_text, "quantity": quantities, "price": prices}),
    "remove_from_cart": st.fixed_dictionaries(
        {"product_id": short_text, "quantity": quantities, "price": prices}
    ),
    "purchase": st.fixed_dictionaries(
        {
            "order_id": short_text,
            "amount": prices,
            "currency": st.sampled_from(["EUR", "USD", "eur", "E\x00R"]),
        }
    ),
}


@st.composite
def events(draw: st.DrawFn) -> dict[str, Any]:
    # Mostly valid, so that most drawn events are accepted and the property has something to say.
    event_type = draw(st.sampled_from([*EVENT_TYPES, *EVENT_TYPES, "", "teleport"]))
    properties = {**draw(extra_properties), **draw(REQUIRED.get(event_type, st.just({})))}
    event: dict[str, Any] = {
        "event_type": event_type,
        "user_id": draw(short_text | short_text | st.text(max_size=130)),
    }
    optional: dict[str, st.SearchStrategy[Any]] = {
        "event_id": st.from_regex(EVENT_ID_PATTERN, fullmatch=True).map(lambda s: s[:64])
        | st.uuids().map(str)
        | st.uuids().map(str)
        | st.text(string.printable, min_size=1, max_size=8),
        "session_id": short_text,
        "timestamp": time_texts,
        "sent_at": time_texts,
        "properties": st.just(properties),
    }
    for name, strategy in optional.items():
        # Properties are sent whenever the type requires some (their rules are drawn above).
        if (name == "properties" and event_type in REQUIRED) or draw(st.integers(0, 2)) > 0:
            event[name] = draw(strategy)
    return event


def test_every_event_the_api_accepts_is_stored_by_the_worker(client: Client, acme: Actor) -> None:
    outcomes = {"accepted": 0, "rejected": 0}

    @settings(
        max_examples=EXAMPLES,
        deadline=None,
        derandomize=True,
        # No shrinking: each step is a request and a pipeline run, and a batch of at most four
        # small events is readable as drawn; shrinking one could outlast the test timeout.
        phases=[Phase.explicit, Phase.reuse, Phase.generate],
        suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture],
    )
    @given(batch=st.lists(events(), min_size=1, max_size=4))
    def accepted_means_stored(batch: list[dict[str, Any]]) -> None:
        purge_queue()
        response = client.post(
            "/api/events/batch",
            data=json.dumps({"events": batch}),
            content_type="application/json",
            **acme.headers,
        )
        assert response.status_code in (202, 400), response.content
        body = response.json()
        for rejected in body["rejected"]:
            assert rejected["errors"] and all(error["field"] for error in rejected["errors"]), rejected
        outcomes["rejected"] += len(body["rejected"])
        if response.status_code == 400:
            return
        outcomes["accepted"] += len(body["event_ids"])
        if body["event_ids"]:
            message = take_one_message()
            args, kwargs, _embed = message.payload
            process_batch(*args, **kwargs)  # the real task body: decode, fraud, scoring, store, actions

        store = get_event_store()
        for index, event_id in enumerate(body["event_ids"]):
            stored = store.get(tenant="acme", event_id=event_id)
            assert stored is not None, (event_id, batch, list(DeadLetter.objects.values("reason", "error")))
            sent = batch[_nth_accepted(batch, body, index)]
            assert (stored["event_type"], stored["user_id"]) == (sent["event_type"], sent["user_id"])
            assert as_numbers(stored["properties"]) == as_numbers(sent.get("properties", {}))
        for duplicate in body["duplicates"]:
            assert store.get(tenant="acme", event_id=duplicate["event_id"]) is not None
        assert not DeadLetter.objects.exists(), list(DeadLetter.objects.values("reason", "error", "payload"))

    accepted_means_stored()
    # The property says something only if both kinds were drawn often.
    assert outcomes["accepted"] >= EXAMPLES // 3 and outcomes["rejected"] >= EXAMPLES // 4, outcomes


def as_numbers(value: Any) -> Any:
    """JSON numbers compared as numbers: PostgreSQL's jsonb keeps 4.224033971103798e+16 as the
    decimal 42240339711037980 and gives it back as an integer (the same JSON number)."""
    if isinstance(value, dict):
        return {key: as_numbers(child) for key, child in value.items()}
    if isinstance(value, list):
        return [as_numbers(child) for child in value]
    if isinstance(value, int | float) and not isinstance(value, bool):
        return float(value)
    return value


def _refused_indexes(body: dict[str, Any]) -> set[int]:
    return {item["index"] for item in body["rejected"]} | {item["index"] for item in body["duplicates"]}


def _nth_accepted(batch: list[dict[str, Any]], body: dict[str, Any], n: int) -> int:
    """Index in the batch of the n-th accepted event (event_ids lists them in batch order)."""
    refused = _refused_indexes(body)
    return [i for i in range(len(batch)) if i not in refused][n]
