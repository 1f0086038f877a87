"""/api/schema/ documents the probes and /metrics too (the fuzz suite checks the answers match it)."""

from __future__ import annotations

import pytest
from django.test import Client

pytestmark = [pytest.mark.django_db, pytest.mark.core]


def test_the_schema_documents_healthz_readyz_and_metrics(client: Client) -> None:
    schema = client.get("/api/schema/", {"format": "json"}).json()

    paths = schema["paths"]
    assert set(paths["/healthz"]) == {"get"} and set(paths["/readyz"]) == {"get"}
    assert set(paths["/readyz"]["get"]["responses"]) == {"200", "503"}
    assert set(paths["/metrics"]["get"]["responses"]["200"]["content"]) == {"text/plain"}
    assert all(paths[p]["get"]["security"] == [] for p in ("/healthz", "/readyz", "/metrics"))
    assert "ProbeError" in schema["components"]["schemas"]


def test_the_schema_keeps_its_format_parameter_and_ignores_an_unknown_one(client: Client) -> None:
    # The API's own views ignore `format`; the schema still honours json and yaml.
    as_json = client.get("/api/schema/", {"format": "json"})
    assert as_json["Content-Type"].startswith("application/vnd.oai.openapi+json")
    as_yaml = client.get("/api/schema/", {"format": "yaml"})
    assert as_yaml["Content-Type"].startswith("application/vnd.oai.openapi")
    assert not as_yaml["Content-Type"].startswith("application/vnd.oai.openapi+json")
    unknown = client.get("/api/schema/", {"format": "1"})
    assert unknown.status_code == 200
    assert unknown["Content-Type"] == as_yaml["Content-Type"]
