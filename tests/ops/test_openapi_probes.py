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
