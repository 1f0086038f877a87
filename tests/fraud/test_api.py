"""GET /api/fraud/alerts."""

from __future__ import annotations

from datetime import timedelta
from typing import Any

import pytest
from django.test import Client

from fraud.services import fraud_evaluate_batch
from tests.fraud.test_services import T0, burst, event

pytestmark = [pytest.mark.django_db, pytest.mark.core]


def raise_alerts(tenant: str) -> None:
    fraud_evaluate_batch(tenant=tenant, events=burst("purchase", 4, user="buyer"))
    fraud_evaluate_batch(tenant=tenant, events=burst("login_failed", 6, user="guesser"))


def test_it_lists_the_tenant_s_alerts_newest_first(client: Client, acme: Any) -> None:
    raise_alerts("acme")
    response = client.get("/api/fraud/alerts", **acme.headers)
    assert response.status_code == 200
    results = response.json()["results"]
    assert [a["rule"] for a in results] == ["login_failed_velocity", "purchase_velocity"]
    purchase = results[1]
    assert purchase["subject"] == "buyer" and purchase["user_id"] == "buyer"
    assert purchase["event_type"] == "purchase"
    assert purchase["window_start"] == "2026-11-26T10:00:00Z"
    assert purchase["window_seconds"] == 600 and purchase["threshold"] == 3 and purchase["event_count"] == 4
    assert len(purchase["event_ids"]) == 4


def test_it_filters_by_user_rule_and_since(client: Client, acme: Any) -> None:
    raise_alerts("acme")
    by_user = client.get("/api/fraud/alerts", {"user_id": "guesser"}, **acme.headers).json()["results"]
    assert [a["rule"] for a in by_user] == ["login_failed_velocity"]
    by_rule = client.get("/api/fraud/alerts", {"rule": "purchase_velocity"}, **acme.headers).json()["results"]
    assert [a["user_id"] for a in by_rule] == ["buyer"]
    later = client.get("/api/fraud/alerts", {"since": "2999-01-01T00:00:00Z"}, **acme.headers).json()
    assert later["results"] == []


def test_it_never_shows_another_tenant_s_alerts(client: Client, acme: Any, globex: Any) -> None:
    raise_alerts("globex")
    assert client.get("/api/fraud/alerts", **acme.headers).json()["results"] == []
    assert len(client.get("/api/fraud/alerts", **globex.headers).json()["results"]) == 2


def test_it_rejects_an_unknown_rule_and_a_bad_since(client: Client, acme: Any) -> None:
    response = client.get("/api/fraud/alerts", {"rule": "nope", "since": "yesterday"}, **acme.headers)
    assert response.status_code == 400
    body = response.json()
    assert body["error"]["code"] == "validation_error"
    assert {d["field"] for d in body["error"]["details"]} == {"rule", "since"}


def test_it_needs_an_api_key(client: Client, acme: Any) -> None:
    response = client.get("/api/fraud/alerts")
    assert response.status_code == 401
    assert response.json()["error"]["code"] == "not_authenticated"


def test_the_ip_rule_alert_names_the_ip_as_subject(client: Client, acme: Any) -> None:
    views = [event("page_view", user=f"v{i}", at=T0 + timedelta(seconds=i)) for i in range(11)]
    fraud_evaluate_batch(tenant="acme", events=views)
    (alert,) = client.get("/api/fraud/alerts", {"rule": "ip_distinct_users"}, **acme.headers).json()[
        "results"
    ]
    assert alert["subject"] == "203.0.113.7" and alert["event_count"] == 11 and alert["user_id"] == "v10"
