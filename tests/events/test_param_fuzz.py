"""Fuzzing of every read endpoint's query and path parameters (the schema fuzz covers bodies):
generated cursors, times, ids and filters are answered 200, 400 or 404, never 500."""

from __future__ import annotations

from typing import Any
from urllib.parse import quote, urlencode

import pytest
from django.test import Client
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from events.schemas import EVENT_TYPES
from fraud.rules import Rule
from tests.conftest import Actor
from tests.events.strategies import cursors, text, time_texts, with_nul

pytestmark = [pytest.mark.django_db, pytest.mark.core]

EXAMPLES = 80
FUZZ = settings(
    max_examples=EXAMPLES,
    deadline=None,
    derandomize=True,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture],
)

ids = st.one_of(text, with_nul, st.uuids().map(str), st.text(min_size=60, max_size=200))
limits = st.one_of(st.integers(min_value=-5, max_value=10**20).map(str), text)


def params(**strategies: st.SearchStrategy[str]) -> st.SearchStrategy[dict[str, str]]:
    """Any subset of the named parameters, each drawn from its strategy."""
    return st.fixed_dictionaries({}, optional=strategies)


def get(client: Client, actor: Actor, path: str, query: dict[str, str] | None = None) -> Any:
    url = path + ("?" + urlencode(query) if query else "")
    response = client.get(url, **actor.headers)
    assert response.status_code in (200, 400, 404), (url, response.status_code, response.content[:500])
    body = response.json()
    if response.status_code != 200:
        assert set(body) == {"error", "correlation_id"} and body["error"]["code"], body
    return response


def test_event_list_parameters(client: Client, acme: Actor) -> None:
    @FUZZ
    @given(
        query=params(
            event_type=st.sampled_from(EVENT_TYPES) | text,
            user_id=text | with_nul,
            since=time_texts,
            until=time_texts,
            limit=limits,
            cursor=cursors,
        )
    )
    def answered(query: dict[str, str]) -> None:
        get(client, acme, "/api/events", query)

    answered()


def test_event_detail_and_score_path_parameters(client: Client, acme: Actor) -> None:
    @FUZZ
    @given(identifier=ids)
    def answered(identifier: str) -> None:
        quoted = quote(identifier, safe="")
        assert get(client, acme, f"/api/events/{quoted}").status_code in (404, 200)
        assert get(client, acme, f"/api/users/{quoted}/score").status_code in (404, 200)

    answered()


def test_ledger_parameters(client: Client, acme: Actor) -> None:
    @FUZZ
    @given(query=params(since=time_texts, until=time_texts))
    def answered(query: dict[str, str]) -> None:
        response = get(client, acme, "/api/ledger", query)
        if response.status_code == 200:
            assert all(row["pending"] >= 0 for row in response.json()["results"])

    answered()


def test_fraud_alert_parameters(client: Client, acme: Actor) -> None:
    @FUZZ
    @given(
        query=params(
            user_id=text | with_nul,
            rule=st.sampled_from([r.value for r in Rule]) | text,
            since=time_texts,
            limit=limits,
        )
    )
    def answered(query: dict[str, str]) -> None:
        get(client, acme, "/api/fraud/alerts", query)

    answered()
