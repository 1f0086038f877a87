"""Cart webhooks under hostile or broken receivers: total deadline, per-tenant lanes, unknown
outcomes, refused destinations, disabled tenants, and tenants created in the admin."""

from __future__ import annotations

import ipaddress
import socketserver
import ssl
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from datetime import timedelta
from pathlib import Path
from typing import Any

import pytest
from django.core.management import CommandError, call_command
from django.test import Client

from carts.models import CartAbandonment
from carts.services import RECEIVER_DEDUPLICATES, cart_checks_fire, cart_events_record, cart_webhooks_deliver
from carts.tasks import fire_cart_abandonments
from carts.webhooks import DeliveryResult, webhook_post
from cloudscale_project.outbound import address_refusal, webhook_url_refusal
from tenants.models import Tenant
from tenants.services import tenant_create, tenant_set_active
from tests.carts.test_cart_abandonment import Receiver, event, now, receiver  # noqa: F401 (the fixture)

pytestmark = [pytest.mark.core]

DRIP_SECONDS = 15.0


@pytest.fixture
def fast(receiver: Receiver) -> Receiver:  # noqa: F811 (the fixture imported above)
    """A receiver that answers at once (the cart-abandonment tests' loopback server)."""
    return receiver


@dataclass
class Drip:
    """A receiver that reads the request, then answers one byte every 0.2 s and never finishes."""

    url: str = ""
    requests: list[bytes] = field(default_factory=list)


@pytest.fixture
def drip() -> Iterator[Drip]:
    state = Drip()

    class Handler(socketserver.BaseRequestHandler):
        def handle(self) -> None:
            data = b""
            while b"\r\n\r\n" not in data:
                data += self.request.recv(65536)
            head, _, body = data.partition(b"\r\n\r\n")
            length = int(next(line.split(b":")[1] for line in head.split(b"\r\n")
                              if line.lower().startswith(b"content-length")))  # fmt: skip
            while len(body) < length:
                body += self.request.recv(65536)
            state.requests.append(body)
            answer = b"HTTP/1.1 200 OK\r\nX-Pad: " + b"a" * 1000
            ends = time.monotonic() + DRIP_SECONDS
            for byte in answer:
                if time.monotonic() > ends:
                    return
                try:
                    self.request.sendall(bytes([byte]))
                except OSError:
                    return  # the sender gave up
                time.sleep(0.2)

    server = socketserver.ThreadingTCPServer(("127.0.0.1", 0), Handler)
    server.daemon_threads = True
    thread = threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True)
    thread.start()
    state.url = f"http://127.0.0.1:{server.server_address[1]}/hooks"
    yield state
    server.shutdown()
    server.server_close()


def abandon(tenant: str, *, users: int, hours_ago: float) -> None:
    at = now() - timedelta(hours=hours_ago)
    cart_events_record(
        tenant=tenant, events=[event("add_to_cart", at=at, user=f"{tenant}-u{i}") for i in range(users)]
    )


@pytest.mark.django_db
class TestWebhookDeadlineAndLanes:
    def test_a_dripping_receiver_delays_neither_the_run_nor_another_tenant(
        self, drip: Drip, fast: Receiver, settings: Any
    ) -> None:
        settings.WEBHOOK_DEADLINE_SECONDS = 1.0
        tenant_create(slug="slowshop", webhook_url=drip.url)
        tenant_create(slug="fastshop", webhook_url=fast.url)
        abandon("slowshop", users=10, hours_ago=2)  # due first: today's order would post these first
        abandon("fastshop", users=3, hours_ago=1)
        cart_checks_fire()

        started = time.monotonic()
        assert cart_webhooks_deliver() == 3
        assert time.monotonic() - started < 8  # one 1 s deadline, not the receiver's 15 s drip
        assert len(fast.requests) == 3

        slow = CartAbandonment.objects.filter(tenant="slowshop")
        failed = slow.get(webhook_status=CartAbandonment.Webhook.FAILED)
        assert "outcome unknown: no answer within the 1 s deadline" in failed.last_error
        assert "not re-sent automatically" in failed.last_error
        # The slow tenant's other carts wait for the next run, their attempt not counted.
        waiting = slow.exclude(pk=failed.pk)
        assert {(a.webhook_status, a.webhook_attempts) for a in waiting} == {
            (CartAbandonment.Webhook.PENDING, 0)
        }
        assert len(drip.requests) == 1

    def test_an_unknown_outcome_is_retried_where_the_receiver_deduplicates(
        self, drip: Drip, settings: Any
    ) -> None:
        settings.WEBHOOK_DEADLINE_SECONDS = 1.0
        tenant = tenant_create(slug="slowshop", webhook_url=drip.url).tenant
        tenant.settings = {RECEIVER_DEDUPLICATES: True}
        tenant.save(update_fields=["settings"])
        abandon("slowshop", users=1, hours_ago=1)
        cart_checks_fire()
        started = time.monotonic()
        assert cart_webhooks_deliver() == 0
        assert time.monotonic() - started < 8
        row = CartAbandonment.objects.get()
        assert row.webhook_status == CartAbandonment.Webhook.PENDING and row.webhook_attempts == 1
        assert row.next_attempt_at is not None and row.next_attempt_at > now()
        assert row.last_error.startswith("outcome unknown")

    def test_a_sender_that_died_mid_post_is_resent_where_the_receiver_deduplicates(
        self, fast: Receiver
    ) -> None:
        tenant = tenant_create(slug="acme", webhook_url=fast.url).tenant
        tenant.settings = {RECEIVER_DEDUPLICATES: True}
        tenant.save(update_fields=["settings"])
        abandon("acme", users=1, hours_ago=1)
        cart_checks_fire()
        CartAbandonment.objects.update(
            webhook_status=CartAbandonment.Webhook.SENDING,
            claim="dead",
            lease_until=now() - timedelta(seconds=1),
        )
        assert cart_webhooks_deliver() == 1
        assert CartAbandonment.objects.get().webhook_status == CartAbandonment.Webhook.DELIVERED
        assert len(fast.requests) == 1


@pytest.mark.parametrize(
    ("address", "refused"),
    [
        ("127.0.0.1", True),
        ("10.1.2.3", True),
        ("192.168.0.10", True),
        ("172.16.5.4", True),
        ("169.254.169.254", True),  # the cloud metadata endpoint
        ("100.100.100.200", True),  # shared address space (another provider's metadata)
        ("0.0.0.0", True),
        ("::1", True),
        ("fe80::1", True),
        ("fd00:ec2::254", True),  # AWS metadata over IPv6 (unique local)
        ("::ffff:127.0.0.1", True),
        ("224.0.0.1", True),
        ("93.184.215.14", False),
        ("2606:4700:4700::1111", False),
    ],
)
def test_it_refuses_non_public_webhook_addresses(address: str, refused: bool, settings: Any) -> None:
    settings.WEBHOOK_ALLOW_PRIVATE = False
    assert (address_refusal(address) is not None) is refused
    settings.WEBHOOK_ALLOW_PRIVATE = True
    assert address_refusal(address) is None


def test_it_refuses_a_host_name_that_resolves_to_loopback(settings: Any) -> None:
    settings.WEBHOOK_ALLOW_PRIVATE = False
    assert "loopback" in (webhook_url_refusal("http://localhost:8080/hook") or "")
    assert webhook_url_refusal("ftp://example.com/hook") is not None


@pytest.mark.django_db
def test_it_does_not_post_to_a_loopback_receiver_unless_allowed(fast: Receiver, settings: Any) -> None:
    tenant_create(slug="acme", webhook_url=fast.url)
    # Refused at delivery too, not only when saved: a name may resolve elsewhere by then.
    settings.WEBHOOK_ALLOW_PRIVATE = False
    abandon("acme", users=1, hours_ago=1)
    fire_cart_abandonments()
    row = CartAbandonment.objects.get()
    assert row.webhook_status == CartAbandonment.Webhook.FAILED
    assert "127.0.0.1 is loopback: refused" in row.last_error
    assert fast.requests == []


@pytest.mark.django_db
def test_a_disabled_tenant_gets_no_webhooks(fast: Receiver) -> None:
    tenant_create(slug="acme", webhook_url=fast.url)
    abandon("acme", users=1, hours_ago=1)
    cart_checks_fire()  # pending delivery ...
    tenant_set_active(slug="acme", active=False)  # ... when the tenant is disabled
    abandon("acme", users=1, hours_ago=2)
    assert cart_webhooks_deliver() == 0
    fire_cart_abandonments()
    statuses = sorted(CartAbandonment.objects.values_list("webhook_status", flat=True))
    assert statuses == [CartAbandonment.Webhook.FAILED, CartAbandonment.Webhook.NONE]
    assert "disabled" in CartAbandonment.objects.get(webhook_status=CartAbandonment.Webhook.FAILED).last_error
    assert fast.requests == []


def _tenant_form(slug: str, webhook_url: str) -> dict[str, str]:
    return {
        "slug": slug, "name": slug.title(), "active": "on", "webhook_url": webhook_url, "webhook_secret": "",
        "settings": "{}",
        "api_keys-TOTAL_FORMS": "0", "api_keys-INITIAL_FORMS": "0",
        "api_keys-MIN_NUM_FORMS": "0", "api_keys-MAX_NUM_FORMS": "1000",
    }  # fmt: skip


@pytest.mark.django_db
def test_a_tenant_created_in_the_admin_gets_a_webhook_secret(admin_client: Client, fast: Receiver) -> None:
    response = admin_client.post("/admin/tenants/tenant/add/", _tenant_form("initech", fast.url))
    assert response.status_code == 302, response.content[:2000]
    assert len(Tenant.objects.get(slug="initech").webhook_secret) == 64


@pytest.mark.django_db
def test_the_admin_refuses_a_private_webhook_url(admin_client: Client, settings: Any) -> None:
    settings.WEBHOOK_ALLOW_PRIVATE = False
    response = admin_client.post(
        "/admin/tenants/tenant/add/", _tenant_form("initech", "http://169.254.169.254/x")
    )
    assert response.status_code == 200
    assert b"link-local (cloud metadata)" in response.content
    assert not Tenant.objects.filter(slug="initech").exists()


@pytest.mark.django_db
def test_the_tenant_command_refuses_a_metadata_webhook_url(settings: Any) -> None:
    settings.WEBHOOK_ALLOW_PRIVATE = False
    with pytest.raises(CommandError, match="link-local"):
        call_command("tenant", "create", "initech", "--webhook-url", "http://169.254.169.254/latest/")
    assert not Tenant.objects.filter(slug="initech").exists()


# --- over TLS ---------------------------------------------------------------------------------------------


@pytest.fixture
def tls_files(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> tuple[Path, Path]:
    """A self-signed certificate for 127.0.0.1 that the sender's default context trusts."""
    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import NameOID

    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "127.0.0.1")])
    cert = (
        x509.CertificateBuilder().subject_name(name).issuer_name(name).public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now() - timedelta(days=1)).not_valid_after(now() + timedelta(days=1))
        .add_extension(x509.SubjectAlternativeName([x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]), False)
        .add_extension(x509.BasicConstraints(ca=True, path_length=None), True)
        .sign(key, hashes.SHA256())
    )  # fmt: skip
    cert_path, key_path = tmp_path / "cert.pem", tmp_path / "key.pem"
    cert_path.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    key_path.write_bytes(
        key.private_bytes(
            serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
        )
    )
    monkeypatch.setenv("SSL_CERT_FILE", str(cert_path))  # read by ssl.create_default_context()
    return cert_path, key_path


def _serve_tls(
    handler: type[socketserver.BaseRequestHandler], files: tuple[Path, Path]
) -> socketserver.TCPServer:
    server = socketserver.ThreadingTCPServer(("127.0.0.1", 0), handler)
    server.daemon_threads = True
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    context.load_cert_chain(*files)
    server.socket = context.wrap_socket(server.socket, server_side=True)
    threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True).start()
    return server


def test_it_delivers_over_tls_and_keeps_the_deadline_there(tls_files: tuple[Path, Path]) -> None:
    drip_for = {"seconds": 0.0}

    class Handler(socketserver.BaseRequestHandler):
        def handle(self) -> None:
            data = b""
            while b"\r\n\r\n" not in data:
                data += self.request.recv(65536)
            ends = time.monotonic() + drip_for["seconds"]
            if drip_for["seconds"]:
                self.request.sendall(b"HTTP/1.1 200 OK\r\n")
            while time.monotonic() < ends:  # headers that never end
                self.request.sendall(b"X-Pad: a\r\n")
                time.sleep(0.2)
            self.request.sendall(b"HTTP/1.1 204 No Content\r\nContent-Length: 0\r\n\r\n")

    server = _serve_tls(Handler, tls_files)
    url = f"https://127.0.0.1:{server.server_address[1]}/hook"
    try:
        sent: dict[str, Any] = {
            "url": url,
            "secret": "s3cret",
            "body": b"{}",
            "delivery_id": "c-1",
            "event": "cart.abandoned",
        }
        assert webhook_post(**sent, deadline_seconds=5) == DeliveryResult(True, 204, "")
        drip_for["seconds"] = 10
        started = time.monotonic()
        result = webhook_post(**sent, deadline_seconds=1)
        assert time.monotonic() - started < 4
        assert result.unknown and not result.ok and "1 s deadline" in result.error
    finally:
        server.shutdown()
        server.server_close()
