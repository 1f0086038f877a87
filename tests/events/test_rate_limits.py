"""Rate limits: per-IP token bucket, global sliding window, trusted proxies, shared across processes."""

from __future__ import annotations

import ipaddress
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from django.test import Client, RequestFactory

from cloudscale_project.state import state_redis
from events import enrichment
from events.enrichment import client_ip_from
from events.throttling import check_rate_limits, rate_limit_subject
from tests.conftest import ROOT, Actor, child_env, wait_until
from tests.netutil import free_port

NETS = (ipaddress.ip_network("10.0.0.0/8"), ipaddress.ip_network("127.0.0.1/32"))


@pytest.mark.parametrize(
    ("peer", "forwarded_for", "expected"),
    [
        ("203.0.113.7", None, "203.0.113.7"),
        ("203.0.113.7", "1.2.3.4", "203.0.113.7"),  # forged header from an untrusted peer: ignored
        ("10.0.0.5", "1.2.3.4", "1.2.3.4"),  # trusted proxy: its client
        ("10.0.0.5", "1.2.3.4, 10.0.0.9", "1.2.3.4"),  # right to left, skipping trusted hops
        ("10.0.0.5", "6.6.6.6, 1.2.3.4, 10.0.0.9", "1.2.3.4"),  # a client-supplied left part is not believed
        ("10.0.0.5", "garbage", "10.0.0.5"),
        ("127.0.0.1", " 2001:db8::1 ", "2001:db8::1"),
    ],
)
def test_client_ip_follows_the_trusted_proxy_rule(
    peer: str, forwarded_for: str | None, expected: str
) -> None:
    assert client_ip_from(peer, forwarded_for, NETS) == expected


def test_client_ip_is_worked_out_once_a_request(monkeypatch: pytest.MonkeyPatch) -> None:
    """The rate limiter and the ingest view both ask; the addresses are parsed for the first."""
    calls: list[tuple[str, str | None]] = []

    def counting(peer: str, forwarded_for: str | None, networks: Any) -> str:
        calls.append((peer, forwarded_for))
        return client_ip_from(peer, forwarded_for, NETS)

    monkeypatch.setattr(enrichment, "client_ip_from", counting)
    first = RequestFactory().post("/api/events", REMOTE_ADDR="10.0.0.5", HTTP_X_FORWARDED_FOR="1.2.3.4")
    second = RequestFactory().post("/api/events", REMOTE_ADDR="10.0.0.5", HTTP_X_FORWARDED_FOR="5.6.7.8")
    assert [enrichment.client_ip(first), enrichment.client_ip(first)] == ["1.2.3.4", "1.2.3.4"]
    assert enrichment.client_ip(second) == "5.6.7.8"  # each request its own
    assert calls == [("10.0.0.5", "1.2.3.4"), ("10.0.0.5", "5.6.7.8")]


@pytest.fixture
def default_limits(settings: Any) -> None:
    settings.RATE_LIMIT_PER_IP_CAPACITY = 100
    settings.RATE_LIMIT_PER_IP_REFILL_PER_SECOND = 10.0
    settings.RATE_LIMIT_GLOBAL_PER_MINUTE = 10_000


def _burst(client: Client, n: int, **headers: Any) -> tuple[list[int], float]:
    started = time.monotonic()
    statuses = [client.post("/api/events", data="{}", content_type="application/json", **headers).status_code
                for _ in range(n)]  # fmt: skip
    return statuses, time.monotonic() - started


@pytest.fixture
def slow_refill(settings: Any) -> None:
    """For tests about whose bucket a request draws from, not about refill: with 10/s a burst that
    takes seconds on a busy machine refills the bucket it is trying to empty."""
    settings.RATE_LIMIT_PER_IP_CAPACITY = 100
    settings.RATE_LIMIT_PER_IP_REFILL_PER_SECOND = 0.01
    settings.RATE_LIMIT_GLOBAL_PER_MINUTE = 10_000


@pytest.mark.django_db
def test_a_burst_of_150_lets_about_100_through(client: Client, default_limits: None) -> None:
    statuses, elapsed = _burst(client, 150)
    passed = sum(1 for s in statuses if s != 429)
    assert 100 <= passed <= 100 + int(elapsed * 10) + 1
    limited = client.post("/api/events", data="{}", content_type="application/json")
    if limited.status_code == 429:
        assert int(limited["Retry-After"]) >= 1


@pytest.mark.django_db
def test_a_forged_forwarded_for_from_an_untrusted_peer_gets_no_fresh_bucket(
    client: Client, slow_refill: None
) -> None:
    _burst(client, 110)
    statuses, _ = _burst(client, 5, HTTP_X_FORWARDED_FOR="198.51.100.1")
    assert statuses.count(429) >= 4


@pytest.mark.django_db
def test_a_trusted_proxys_forwarded_for_is_honoured(client: Client, slow_refill: None, settings: Any) -> None:
    settings.TRUSTED_PROXIES = ["127.0.0.0/8"]
    enrichment.trusted_proxies.cache_clear()
    try:
        first, _ = _burst(client, 105, HTTP_X_FORWARDED_FOR="198.51.100.1")
        second, _ = _burst(client, 5, HTTP_X_FORWARDED_FOR="198.51.100.2")
    finally:
        enrichment.trusted_proxies.cache_clear()
    assert first.count(429) >= 4
    assert second.count(429) == 0


def test_the_global_window_limits_all_addresses_together(settings: Any) -> None:
    settings.RATE_LIMIT_PER_IP_CAPACITY = 1000
    settings.RATE_LIMIT_GLOBAL_PER_MINUTE = 20
    decisions = [check_rate_limits(ip=f"192.0.2.{i}", tenant=f"t{i}") for i in range(25)]
    assert sum(d.allowed for d in decisions) == 20
    refused = [d for d in decisions if not d.allowed]
    assert {d.limited_by for d in refused} == {"global"}
    assert all(1 <= d.retry_after_seconds <= 60 for d in refused)


def test_a_refused_request_does_not_drain_the_ip_bucket(settings: Any) -> None:
    settings.RATE_LIMIT_PER_IP_CAPACITY = 5
    settings.RATE_LIMIT_GLOBAL_PER_MINUTE = 2
    settings.RATE_LIMIT_TENANT_SHARE = 1.0
    assert [check_rate_limits(ip="192.0.2.1", tenant="acme").allowed for _ in range(3)] == [True, True, False]
    assert check_rate_limits(ip="192.0.2.1", tenant="acme").remaining == 3


def test_the_window_counters_expire_after_two_windows(settings: Any) -> None:
    """A window's counter gets its expiry in the write that creates it, and keeps it."""
    settings.RATE_LIMIT_TENANT_SHARE = 0.5
    for _ in range(3):
        assert check_rate_limits(ip="192.0.2.1", tenant="acme").allowed
    redis_client = state_redis()
    keys = [key.decode() if isinstance(key, bytes) else key for key in redis_client.keys("rl:*:*")]
    counters = sorted(key for key in keys if not key.startswith("rl:ip:"))
    assert [key.rsplit(":", 1)[0] for key in counters] == ["rl:global", "rl:share:acme"]
    assert [int(redis_client.get(key) or 0) for key in counters] == [3, 3]
    assert all(0 < redis_client.ttl(key) <= 121 for key in counters)


def test_it_loads_its_script_again_on_a_server_that_lost_it() -> None:
    first = check_rate_limits(ip="192.0.2.1", tenant="acme")
    state_redis().script_flush()  # as a restarted server without its scripts
    again = check_rate_limits(ip="192.0.2.1", tenant="acme")
    assert first.allowed and again.allowed
    assert again.remaining == first.remaining - 1


def test_the_tenant_quota_counts_events(settings: Any) -> None:
    settings.RATE_LIMIT_TENANT_EVENTS_PER_SECOND = 10
    assert check_rate_limits(ip="192.0.2.1", tenant="acme", events=8).allowed
    refused = check_rate_limits(ip="192.0.2.1", tenant="acme", events=8)
    assert not refused.allowed and refused.limited_by == "tenant"
    assert check_rate_limits(ip="192.0.2.1", tenant="globex", events=8).allowed


@pytest.mark.parametrize(
    ("ip", "prefix", "subject"),
    [
        ("192.0.2.7", 64, "192.0.2.7"),
        ("2001:db8:1:2:aaaa:bbbb:cccc:dddd", 64, "2001:db8:1:2::/64"),
        ("2001:db8:1:2:aaaa:bbbb:cccc:dddd", 48, "2001:db8:1::/48"),
        ("2001:db8:1:2:aaaa:bbbb:cccc:dddd", 128, "2001:db8:1:2:aaaa:bbbb:cccc:dddd/128"),
        ("::ffff:192.0.2.7", 64, "192.0.2.7"),  # an IPv4 client seen through a dual-stack socket
        ("", 64, ""),
    ],
)
def test_it_buckets_ipv6_clients_by_network(ip: str, prefix: int, subject: str, settings: Any) -> None:
    settings.RATE_LIMIT_IPV6_PREFIX = prefix
    assert rate_limit_subject(ip) == subject


def test_it_gives_one_ipv6_slash_64_one_bucket(settings: Any) -> None:
    settings.RATE_LIMIT_PER_IP_CAPACITY = 100
    settings.RATE_LIMIT_PER_IP_REFILL_PER_SECOND = 0.001
    started = time.monotonic()
    one_host = [check_rate_limits(ip=f"2001:db8:0:1::{i:x}", tenant="acme") for i in range(1, 151)]
    assert sum(d.allowed for d in one_host) <= 100 + int((time.monotonic() - started) * 0.001) + 1
    assert {d.limited_by for d in one_host if not d.allowed} == {"ip"}
    assert check_rate_limits(ip="2001:db8:0:2::1", tenant="acme").allowed  # the next /64 is someone else


@pytest.mark.django_db
def test_it_does_not_spend_the_tenants_window_on_unauthenticated_requests(
    client: Client, settings: Any, acme: Actor
) -> None:
    settings.RATE_LIMIT_GLOBAL_PER_MINUTE = 50
    settings.RATE_LIMIT_ANONYMOUS_PER_MINUTE = 20
    wrong_key: dict[str, Any] = {"HTTP_AUTHORIZATION": "Bearer cs_not-a-key"}
    anonymous = [
        client.post("/api/events", data="{}", content_type="application/json", REMOTE_ADDR=f"198.51.100.{i}",
                    **(wrong_key if i % 2 else {})).status_code
        for i in range(1, 81)
    ]  # fmt: skip
    assert anonymous.count(401) == 20 and anonymous.count(429) == 60
    limited = client.post(
        "/api/events", data="{}", content_type="application/json", REMOTE_ADDR="198.51.100.1"
    )
    assert limited.json()["error"]["message"].startswith("Rate limit of unauthenticated requests exceeded")
    assert int(limited["Retry-After"]) >= 1 and "RateLimit-Remaining" in limited
    # The tenant's own budget is untouched: its request reaches validation (400), not a 429.
    mine = client.post("/api/events", data="{}", content_type="application/json", REMOTE_ADDR="203.0.113.9",
                       **acme.headers)  # fmt: skip
    assert mine.status_code == 400


@pytest.mark.django_db
def test_a_disabled_tenants_requests_do_not_spend_the_tenants_window(
    client: Client, settings: Any, acme: Actor, globex: Actor
) -> None:
    from tenants.services import tenant_set_active

    settings.RATE_LIMIT_GLOBAL_PER_MINUTE = 30
    tenant_set_active(slug="acme", active=False)
    statuses = [client.get("/api/events", **acme.headers).status_code for _ in range(40)]
    assert statuses.count(403) == 40
    assert client.get("/api/events", **globex.headers).status_code == 200


def test_one_tenant_cannot_take_the_whole_global_window(settings: Any) -> None:
    settings.RATE_LIMIT_GLOBAL_PER_MINUTE = 100
    settings.RATE_LIMIT_TENANT_SHARE = 0.5
    settings.RATE_LIMIT_CONTENDED_AT = 0.8
    hog = [check_rate_limits(ip=f"192.0.2.{i % 200}", tenant="hog") for i in range(200)]
    # Alone, the hog may use the window up to where it becomes contended...
    assert sum(d.allowed for d in hog) == 80
    refused = [d for d in hog if not d.allowed]
    assert {d.limited_by for d in refused} == {"share"} and all(d.retry_after_seconds >= 1 for d in refused)
    # ...and the rest is left to the others, up to the global limit itself.
    others = [check_rate_limits(ip="198.51.100.1", tenant=f"small{i % 3}") for i in range(30)]
    assert sum(d.allowed for d in others) == 20
    assert {d.limited_by for d in others if not d.allowed} == {"global"}


def test_with_the_fair_share_off_one_tenant_may_fill_the_window(settings: Any) -> None:
    settings.RATE_LIMIT_GLOBAL_PER_MINUTE = 100
    settings.RATE_LIMIT_TENANT_SHARE = 1.0
    assert sum(check_rate_limits(ip="192.0.2.1", tenant="hog").allowed for _ in range(120)) == 100


@pytest.mark.django_db
def test_it_limits_a_tenants_reads_and_not_the_others(
    client: Client, settings: Any, acme: Actor, globex: Actor
) -> None:
    settings.RATE_LIMIT_TENANT_READS_PER_SECOND = 0.01
    settings.RATE_LIMIT_TENANT_READ_BURST = 5
    statuses = [client.get(path, **acme.headers).status_code
                for path in ["/api/ledger", "/api/events/no-such-event"] * 5]  # fmt: skip
    assert statuses[:5] == [200, 404, 200, 404, 200] and statuses[5:] == [429] * 5
    limited = client.get("/api/ledger", **acme.headers)
    assert limited.json()["error"]["message"].startswith("Rate limit of this tenant's reads exceeded")
    assert int(limited["Retry-After"]) >= 1
    assert client.get("/api/ledger", **globex.headers).status_code == 200
    # Writes are not reads: the tenant can still send events.
    assert (
        client.post("/api/events", data="{}", content_type="application/json", **acme.headers).status_code
        == 400
    )


# --- two real API processes share one bucket --------------------------------------------------------------


def _status(url: str) -> int:
    request = urllib.request.Request(url, data=b"{}", headers={"Content-Type": "application/json"})
    try:
        with urllib.request.urlopen(request, timeout=5) as response:
            return int(response.status)
    except urllib.error.HTTPError as exc:
        return int(exc.code)


@pytest.fixture
def two_api_processes(transactional_db: None, tmp_path: Path) -> Iterator[list[str]]:
    env = child_env(
        CLOUDSCALE_RATE_LIMIT_PER_IP_CAPACITY="100",
        CLOUDSCALE_RATE_LIMIT_PER_IP_REFILL="10",
        CLOUDSCALE_RATE_LIMIT_GLOBAL_PER_MINUTE="10000",
    )
    processes, urls = [], []
    for i in range(2):
        port = free_port()
        log = (tmp_path / f"api{i}.log").open("wb")
        processes.append(subprocess.Popen(
            [sys.executable, "-m", "gunicorn", "cloudscale_project.wsgi:application", "--config",
             str(ROOT / "deploy" / "gunicorn.conf.py"), "--bind", f"127.0.0.1:{port}", "--workers", "1"],
            cwd=ROOT, env=env, stdout=log, stderr=subprocess.STDOUT,
        ))  # fmt: skip
        urls.append(f"http://127.0.0.1:{port}")
    try:
        for url in urls:
            wait_until(lambda u=url: _healthy(u), timeout=60, message=f"{url} up")
        yield urls
    finally:
        for process in processes:
            process.terminate()
            process.wait(timeout=20)


def _healthy(url: str) -> bool:
    try:
        with urllib.request.urlopen(f"{url}/healthz", timeout=1) as response:
            return int(response.status) == 200
    except OSError:
        return False


@pytest.mark.e2e
def test_two_api_processes_share_the_same_bucket(two_api_processes: list[str]) -> None:
    started = time.monotonic()
    statuses = [_status(f"{two_api_processes[i % 2]}/api/events") for i in range(150)]
    elapsed = time.monotonic() - started
    passed = sum(1 for s in statuses if s != 429)
    assert 100 <= passed <= 100 + int(elapsed * 10) + 1, (passed, elapsed)
    assert statuses.count(429) >= 150 - 100 - int(elapsed * 10) - 1


@pytest.mark.django_db
def test_it_looks_the_key_up_once_per_request(
    client: Client, acme: Actor, django_assert_num_queries: Any
) -> None:
    # The middleware needs the tenant to choose the window; authentication reuses its lookup.
    with django_assert_num_queries(1):
        response = client.post("/api/events", data="{}", content_type="application/json", **acme.headers)
    assert response.status_code == 400
