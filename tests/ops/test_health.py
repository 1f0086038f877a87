from __future__ import annotations

import pytest
from celery import Celery
from django.test import Client

import ops.health

pytestmark = [pytest.mark.django_db, pytest.mark.core]


def test_healthz_answers_while_the_process_lives(client: Client) -> None:
    response = client.get("/healthz")
    assert response.status_code == 200
    assert response["X-Correlation-ID"]


def test_readyz_is_200_when_database_broker_shared_state_and_store_answer(client: Client) -> None:
    response = client.get("/readyz")
    assert response.status_code == 200, response.json()
    assert response.json()["checks"] == {
        "database": "ok",
        "broker": "ok",
        "shared_state": "ok",
        "event_store": "ok",
    }


def test_readyz_is_503_naming_the_broker_when_it_is_down(
    client: Client, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(ops.health, "app", Celery(broker="redis://127.0.0.1:1/0"))
    response = client.get("/readyz")
    body = response.json()
    assert response.status_code == 503
    assert body["error"]["code"] == "not_ready"
    assert body["error"]["message"] == "Not ready: broker unavailable."
    assert body["checks"]["database"] == "ok"
    assert body["error"]["details"] == [{"field": "broker", "message": "unavailable"}]


def test_readyz_is_503_naming_the_shared_state_when_its_redis_is_down(
    client: Client, shared_state_down: str
) -> None:
    response = client.get("/readyz")
    body = response.json()
    assert response.status_code == 503
    assert body["error"]["message"] == "Not ready: shared_state unavailable."
    assert body["checks"]["shared_state"] == "unavailable"
    assert body["checks"]["database"] == "ok"


def test_readyz_does_not_show_internal_error_text(client: Client, shared_state_down: str) -> None:
    port = shared_state_down.rsplit(":", 1)[1].split("/", maxsplit=1)[0]
    text = client.get("/readyz").content.decode()
    assert port not in text and "Error" not in text and "127.0.0.1" not in text
    assert set(client.get("/readyz").json()["checks"].values()) <= {"ok", "unavailable"}


def test_unknown_paths_get_a_json_404(client: Client) -> None:
    response = client.get("/nothing-here")
    assert response.status_code == 404
    assert response.json()["error"]["code"] == "not_found"
