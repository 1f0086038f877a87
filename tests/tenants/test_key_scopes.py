"""Key scopes: an `ingest` key (the kind that lives in browsers and apps) sends events and reads nothing."""

from __future__ import annotations

import io

import orjson
import pytest
from django.core.management import call_command
from django.test import Client

from tenants.models import ApiKey
from tests.conftest import Actor

pytestmark = [pytest.mark.django_db, pytest.mark.core]

PAGE_VIEW = {"event_type": "page_view", "user_id": "u-1", "properties": {"url": "https://shop.example/"}}
READS = [
    "/api/events",
    "/api/events/e-1",
    "/api/users/u-1/score",
    "/api/fraud/alerts",
    "/api/ledger",
]


@pytest.fixture
def acme_ingest(acme: Actor) -> Actor:
    out = io.StringIO()
    call_command("tenant", "create-key", "acme", "--scope", "ingest", stdout=out, stderr=io.StringIO())
    return Actor("acme", out.getvalue().strip().splitlines()[-1])


def post(client: Client, actor: Actor, path: str, body: object) -> int:
    return client.post(path, orjson.dumps(body), content_type="application/json", **actor.headers).status_code


def test_create_key_prints_only_the_key_and_keeps_the_other_keys(acme: Actor, acme_ingest: Actor) -> None:
    assert acme_ingest.key.startswith("cs_") and acme_ingest.key != acme.key
    scopes = sorted(
        ApiKey.objects.filter(tenant__slug="acme", revoked_at=None).values_list("scope", flat=True)
    )
    assert scopes == ["full", "ingest"]


def test_an_ingest_key_sends_single_events_and_batches(client: Client, acme_ingest: Actor) -> None:
    assert post(client, acme_ingest, "/api/events", PAGE_VIEW) == 202
    assert post(client, acme_ingest, "/api/events/batch", {"events": [PAGE_VIEW, PAGE_VIEW]}) == 202


@pytest.mark.parametrize("path", READS)
def test_an_ingest_key_gets_403_on_every_read(client: Client, acme_ingest: Actor, path: str) -> None:
    response = client.get(path, **acme_ingest.headers)
    assert response.status_code == 403
    assert response.json()["error"]["code"] == "permission_denied"
    assert "scope 'ingest'" in response.json()["error"]["message"]


@pytest.mark.parametrize("path", READS)
def test_a_full_key_reads_everything(client: Client, acme: Actor, path: str) -> None:
    assert client.get(path, **acme.headers).status_code in {200, 404}  # 404: no such event or user yet


def test_tenant_create_still_prints_a_full_key(acme: Actor) -> None:
    assert ApiKey.objects.get(tenant__slug="acme").scope == ApiKey.Scope.FULL


def test_it_refuses_an_unknown_scope() -> None:
    with pytest.raises(Exception, match="invalid choice"):
        call_command(
            "tenant", "create-key", "acme", "--scope", "admin", stdout=io.StringIO(), stderr=io.StringIO()
        )
