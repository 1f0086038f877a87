"""`manage.py loadgen` against a live server (Django's, in this process) and a live worker."""

from __future__ import annotations

import json
from collections import Counter, defaultdict
from pathlib import Path
from typing import Any

import pytest
from django.conf import settings
from django.core.management import call_command
from django.core.management.base import CommandError

from benchmarks.loadgen import REASON_INVALID, TrafficGenerator
from events.models import StoredEvent
from events.schemas import EVENT_TYPES, validate_event
from tests.conftest import Actor, LiveProcess, wait_until


def _loadgen(tmp_path: Path, url: str, **options: Any) -> tuple[dict[str, Any], list[str], str]:
    """Run the command; (summary JSON, ids written, printed table)."""
    ids_out, summary_out = tmp_path / "ids.txt", tmp_path / "summary.json"
    from io import StringIO

    stdout = StringIO()
    call_command(
        "loadgen",
        url=url,
        ids_out=ids_out,
        summary_json=summary_out,
        no_progress=True,
        stdout=stdout,
        **options,
    )
    return json.loads(summary_out.read_text()), ids_out.read_text().split(), stdout.getvalue()


# --- the traffic itself (no I/O) --------------------------------------------------------------------------


def test_it_generates_valid_events_of_every_catalog_type() -> None:
    planned = TrafficGenerator(seed=1).take(4000)

    assert all(validate_event(p.event)[0] is not None for p in planned)
    assert {p.event["event_type"] for p in planned} == set(EVENT_TYPES)
    assert len({p.event["event_id"] for p in planned}) == 4000


def test_it_generates_fraud_like_bursts() -> None:
    planned = TrafficGenerator(seed=2, fraud_ratio=1.0).take(3000)

    purchases = Counter(p.event["user_id"] for p in planned if p.event["event_type"] == "purchase")
    failed_logins = Counter(p.event["user_id"] for p in planned if p.event["event_type"] == "login_failed")
    users_by_address: dict[str, set[str]] = defaultdict(set)
    for p in planned:
        users_by_address[p.client_ip].add(p.event["user_id"])
    assert max(purchases.values()) > 3  # the default fraud rules (docs/api.md, "Fraud rules")
    assert max(failed_logins.values()) > 5
    assert max(len(users) for users in users_by_address.values()) > 10


def test_it_spoils_about_the_requested_share_of_events() -> None:
    planned = TrafficGenerator(seed=3, invalid_ratio=0.2).take(2000)

    invalid = sum(1 for p in planned if validate_event(p.event)[0] is None)
    assert 300 < invalid < 500


# --- against a live server ----------------------------------------------------------------------------------


@pytest.mark.e2e
def test_it_sends_single_events_and_every_202_id_is_stored(
    acme: Actor, live_server: Any, live_worker: LiveProcess, tmp_path: Path
) -> None:
    summary, ids, table = _loadgen(tmp_path, live_server.url, events=40, key=acme.key, concurrency=4, seed=5)

    assert summary["sent"] == 40
    assert summary["accepted"] == 40
    assert summary["duplicates"] == summary["rejected"] == 0
    assert summary["statuses"] == {"202": 40}
    assert summary["latency_ms"]["p50"] > 0
    assert len(set(ids)) == 40
    wait_until(lambda: StoredEvent.objects.filter(tenant="acme").count() == 40, message="40 events stored")
    assert set(StoredEvent.objects.filter(tenant="acme").values_list("event_id", flat=True)) == set(ids)
    assert "accepted (202)        40" in table


@pytest.mark.e2e
def test_it_sends_batches_and_counts_every_rejected_receipt(
    acme: Actor, live_server: Any, tmp_path: Path
) -> None:
    summary, ids, table = _loadgen(
        tmp_path, live_server.url, events=230, batch=100, invalid_ratio=0.2, key=acme.key, seed=6
    )

    assert summary["requests"] == 3
    assert summary["statuses"] == {"202": 3}
    assert summary["accepted"] + summary["duplicates"] + summary["rejected"] == 230
    assert summary["rejected_by_reason"] == {REASON_INVALID: summary["rejected"]}
    assert 20 < summary["rejected"] < 80
    assert len(ids) == summary["accepted"]
    assert f"{REASON_INVALID}  {summary['rejected']}" in table


@pytest.mark.e2e
def test_it_counts_every_event_sent_with_a_wrong_key_as_401(live_server: Any, tmp_path: Path) -> None:
    summary, ids, _ = _loadgen(tmp_path, live_server.url, events=12, batch=4, key="cs_not-a-key")

    assert summary["sent"] == 12
    assert summary["accepted"] == 0
    assert summary["statuses"] == {"401": 3}
    assert summary["rejected_by_reason"] == {"401 authentication_failed": 12}
    assert ids == []


@pytest.mark.e2e
def test_it_counts_429s_and_retries_them_after_retry_after(
    acme: Actor, live_server: Any, tmp_path: Path, settings: Any
) -> None:
    settings.RATE_LIMIT_PER_IP_CAPACITY = 3
    settings.RATE_LIMIT_PER_IP_REFILL_PER_SECOND = 2.0  # slower than sequential requests

    refused, _, _ = _loadgen(tmp_path, live_server.url, events=8, key=acme.key, concurrency=1)
    retried, ids, _ = _loadgen(tmp_path, live_server.url, events=8, key=acme.key, concurrency=1, retries=3)

    assert refused["status_429"] > 0
    assert refused["rejected_by_reason"] == {"429 rate_limited": refused["status_429"]}
    assert refused["accepted"] == 8 - refused["status_429"]
    assert retried["status_429"] > 0
    assert retried["accepted"] == 8
    assert retried["retries"] == retried["status_429"]
    assert len(ids) == 8


@pytest.mark.e2e
def test_it_keeps_the_target_rate(acme: Actor, live_server: Any, tmp_path: Path) -> None:
    summary, _, _ = _loadgen(tmp_path, live_server.url, events=30, rate=60.0, key=acme.key, concurrency=4)

    assert summary["accepted"] == 30
    assert summary["elapsed_s"] >= 29 / 60 * 0.9  # the first request goes at once


@pytest.mark.e2e
def test_it_uses_the_demo_key_from_the_state_folder(
    live_server: Any, tmp_path: Path, db: None, monkeypatch: pytest.MonkeyPatch
) -> None:
    from tenants.services import tenant_create

    monkeypatch.delenv("CLOUDSCALE_API_KEY", raising=False)
    key_file = settings.STATE_DIR / "demo_api_key"
    key_file.write_text(tenant_create(slug="demo", name="Demo").key)
    try:
        summary, ids, table = _loadgen(tmp_path, live_server.url, events=5, batch=5)
    finally:
        key_file.unlink()

    assert summary["accepted"] == 5
    assert len(ids) == 5
    assert "(key: tenant demo)" in table


@pytest.mark.e2e
def test_it_sends_as_any_tenant_with_an_ingest_key_of_its_own(
    acme: Actor, live_server: Any, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from tenants.models import ApiKey

    monkeypatch.delenv("CLOUDSCALE_API_KEY", raising=False)

    summary, _, table = _loadgen(tmp_path, live_server.url, events=4, batch=2, tenant="acme")

    assert summary["accepted"] == 4
    assert "(key: tenant acme (a new ingest-only key))" in table
    assert ApiKey.objects.filter(tenant__slug="acme", scope="ingest").count() == 1


@pytest.mark.e2e
def test_it_creates_a_tenant_it_does_not_know(
    live_server: Any, tmp_path: Path, db: None, monkeypatch: Any
) -> None:
    from tenants.models import Tenant

    monkeypatch.delenv("CLOUDSCALE_API_KEY", raising=False)

    summary, _, table = _loadgen(tmp_path, live_server.url, events=3, tenant="newcomer")

    assert summary["accepted"] == 3
    assert Tenant.objects.filter(slug="newcomer").exists()
    assert "(key: tenant newcomer (created just now))" in table


def test_it_refuses_a_retired_tenant(acme: Actor, monkeypatch: pytest.MonkeyPatch) -> None:
    from tenants.services import tenant_retire

    monkeypatch.delenv("CLOUDSCALE_API_KEY", raising=False)
    tenant_retire(slug="acme")

    with pytest.raises(CommandError, match=r"no API key for tenant 'acme'.*retired"):
        call_command("loadgen", events=1, tenant="acme", no_progress=True)
