"""GET /api/users/{user_id}/score."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
from django.test import Client

from scoring.services import score_apply_batch
from tests.scoring.test_services import event

pytestmark = [pytest.mark.django_db, pytest.mark.core]


def now() -> datetime:
    return datetime.now(UTC)


def test_it_returns_the_score_segment_and_count(client: Client, acme: Any) -> None:
    score_apply_batch(
        tenant="acme",
        events=[event("purchase", user="u-42", at=now()), event("purchase", user="u-42", at=now()),
                event("add_to_cart", user="u-42", at=now()), event("search", user="u-42", at=now())],
    )  # fmt: skip
    response = client.get("/api/users/u-42/score", **acme.headers)
    assert response.status_code == 200
    body = response.json()
    assert set(body) == {"user_id", "score", "segment", "events_counted", "updated_at"}
    assert body["user_id"] == "u-42" and body["events_counted"] == 4
    assert body["score"] == pytest.approx(47.0, abs=0.01)
    assert body["segment"] == "engaged"
    assert body["updated_at"].endswith("Z")


@pytest.mark.parametrize(
    ("events", "segment"),
    [(["purchase", "purchase", "checkout_started", "add_to_cart"], "high_intent"),
     (["search", "add_to_cart", "page_view", "login", "signup"], "engaged"),
     (["page_view", "click"], "casual")],
)  # fmt: skip
def test_it_segments_users(client: Client, acme: Any, events: list[str], segment: str) -> None:
    score_apply_batch(tenant="acme", events=[event(t, user="u", at=now()) for t in events])
    assert client.get("/api/users/u/score", **acme.headers).json()["segment"] == segment


def test_it_decays_old_events(client: Client, acme: Any) -> None:
    score_apply_batch(tenant="acme", events=[event("purchase", user="old", at=now() - timedelta(days=14))])
    assert client.get("/api/users/old/score", **acme.headers).json()["score"] == pytest.approx(5.0, abs=0.01)


def test_it_answers_404_for_an_unknown_user(client: Client, acme: Any) -> None:
    response = client.get("/api/users/nobody/score", **acme.headers)
    assert response.status_code == 404
    assert response.json()["error"]["code"] == "not_found"


def test_it_never_shows_another_tenant_s_user(client: Client, acme: Any, globex: Any) -> None:
    score_apply_batch(tenant="globex", events=[event("purchase", user="u-7", at=now())])
    assert client.get("/api/users/u-7/score", **acme.headers).status_code == 404
    assert client.get("/api/users/u-7/score", **globex.headers).status_code == 200


def test_it_needs_an_api_key(client: Client) -> None:
    assert client.get("/api/users/u-1/score").status_code == 401


def test_it_accepts_user_ids_with_url_special_characters(client: Client, acme: Any) -> None:
    score_apply_batch(tenant="acme", events=[event("signup", user="alice@example.com", at=now())])
    response = client.get("/api/users/alice%40example.com/score", **acme.headers)
    assert response.status_code == 200 and response.json()["user_id"] == "alice@example.com"
