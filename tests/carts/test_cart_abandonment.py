"""Cart abandonment: scheduled by the actions step, fired by beat, one signed webhook per cart."""

from __future__ import annotations

import hashlib
import hmac
import json
import threading
import uuid
from collections.abc import Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import pytest
import redis
from django.conf import settings

from carts.models import CartAbandonment, CartCheck
from carts.services import cart_checks_fire, cart_events_record, cart_webhooks_deliver, cart_webhooks_retry
from carts.tasks import fire_cart_abandonments
from cloudscale_project.timeutil import isoformat_z
from tenants.models import Tenant

pytestmark = [pytest.mark.core]


@dataclass
class Receiver:
    """A real HTTP server on loopback that records the webhooks it gets."""

    url: str = ""
    requests: list[tuple[dict[str, str], bytes]] = field(default_factory=list)
    answers: list[int] = field(default_factory=list)  # statuses to answer with, then 200


@pytest.fixture
def receiver() -> Iterator[Receiver]:
    state = Receiver()

    class Handler(BaseHTTPRequestHandler):
        def do_POST(self) -> None:
            body = self.rfile.read(int(self.headers["Content-Length"]))
            state.requests.append(({k.lower(): v for k, v in self.headers.items()}, body))
            self.send_response(state.answers.pop(0) if state.answers else 200)
            self.end_headers()

        def log_message(self, *args: Any) -> None:
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    thread = threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True)
    thread.start()
    state.url = f"http://127.0.0.1:{server.server_address[1]}/hooks/cart"
    yield state
    server.shutdown()
    server.server_close()


@pytest.fixture
def shop(acme: Any, receiver: Receiver) -> Tenant:
    tenant = Tenant.objects.get(slug="acme")
    tenant.webhook_url = receiver.url
    tenant.save(update_fields=["webhook_url"])
    return tenant


def event(event_type: str, *, at: datetime, user: str = "u1", event_id: str | None = None) -> dict[str, Any]:
    props = {"product_id": "sku-1", "quantity": 2, "price": 9.5} if event_type == "add_to_cart" else {}
    if event_type == "purchase":
        props = {"order_id": "o-1", "amount": 19.0, "currency": "EUR"}
    return {
        "event_id": event_id or str(uuid.uuid4()),
        "event_type": event_type,
        "user_id": user,
        "session_id": "s-1",
        "properties": props,
        "timestamp": isoformat_z(at),
        "tenant": "acme",
    }


def now() -> datetime:
    return datetime.now(UTC)


def abandonment_metric(state_redis: redis.Redis) -> int:
    return int(state_redis.hget("metrics:counter:cloudscale_cart_abandonments_total", "{}") or 0)


@pytest.mark.django_db
class TestCartAbandonment:
    def test_a_purchase_within_30_minutes_cancels_the_check(self, shop: Tenant, receiver: Receiver) -> None:
        added = now() - timedelta(minutes=45)
        cart_events_record(tenant="acme", events=[event("add_to_cart", at=added)])
        cart_events_record(tenant="acme", events=[event("purchase", at=added + timedelta(minutes=29))])
        fire_cart_abandonments()
        assert not CartAbandonment.objects.exists()
        assert CartCheck.objects.get().status == CartCheck.Status.CANCELLED
        assert receiver.requests == []

    def test_a_purchase_processed_before_its_add_to_cart_still_cancels_it(self, shop: Tenant) -> None:
        added = now() - timedelta(minutes=45)
        cart_events_record(tenant="acme", events=[event("purchase", at=added + timedelta(minutes=5))])
        cart_events_record(tenant="acme", events=[event("add_to_cart", at=added)])
        assert cart_checks_fire() == []
        assert CartCheck.objects.get().status == CartCheck.Status.CANCELLED

    def test_an_add_to_cart_alone_gives_one_abandonment_and_one_signed_webhook(
        self, shop: Tenant, receiver: Receiver, state_redis: redis.Redis
    ) -> None:
        added = now() - timedelta(minutes=31)
        add = event("add_to_cart", at=added)
        cart_events_record(tenant="acme", events=[add])
        cart_events_record(tenant="acme", events=[add])  # a redelivered batch
        fire_cart_abandonments()
        fire_cart_abandonments()  # beat runs again

        abandonment = CartAbandonment.objects.get()
        assert (abandonment.user_id, abandonment.cart_event_id) == ("u1", add["event_id"])
        assert abandonment.webhook_status == CartAbandonment.Webhook.DELIVERED
        assert abandonment.webhook_attempts == 1 and abandonment.response_status == 200
        assert abandonment_metric(state_redis) == 1

        (headers, body) = receiver.requests[0]
        assert len(receiver.requests) == 1
        expected = "sha256=" + hmac.new(shop.webhook_secret.encode(), body, hashlib.sha256).hexdigest()
        assert hmac.compare_digest(headers["x-cloudscale-signature"], expected)
        assert headers["x-cloudscale-delivery"] == add["event_id"]
        assert headers["content-type"] == "application/json"
        payload = json.loads(body)
        assert payload["type"] == "cart.abandoned" and payload["cart_id"] == add["event_id"]
        assert payload["user_id"] == "u1" and payload["tenant"] == "acme" and payload["product_id"] == "sku-1"
        assert payload["added_at"] == add["timestamp"]
        assert payload["due_at"] == isoformat_z(added + timedelta(minutes=settings.CART_ABANDONMENT_MINUTES))

    def test_nothing_fires_before_30_minutes_of_event_time(self, shop: Tenant, receiver: Receiver) -> None:
        added = now() - timedelta(minutes=10)
        cart_events_record(tenant="acme", events=[event("add_to_cart", at=added)])
        assert cart_checks_fire() == []
        assert CartCheck.objects.get().due_at == added + timedelta(minutes=30)
        assert len(cart_checks_fire(now=added + timedelta(minutes=30))) == 1

    def test_a_purchase_after_the_due_time_does_not_cancel(self, shop: Tenant) -> None:
        added = now() - timedelta(hours=2)
        cart_events_record(
            tenant="acme",
            events=[event("add_to_cart", at=added), event("purchase", at=added + timedelta(minutes=30))],
        )
        assert len(cart_checks_fire()) == 1

    def test_a_purchase_by_another_user_does_not_cancel(self, shop: Tenant) -> None:
        added = now() - timedelta(hours=1)
        cart_events_record(
            tenant="acme",
            events=[
                event("add_to_cart", at=added),
                event("purchase", at=added + timedelta(minutes=1), user="u2"),
            ],
        )
        assert [a.user_id for a in cart_checks_fire()] == ["u1"]

    def test_a_failed_webhook_is_retried_with_backoff_and_delivered_once(
        self, shop: Tenant, receiver: Receiver
    ) -> None:
        receiver.answers = [503]
        cart_events_record(tenant="acme", events=[event("add_to_cart", at=now() - timedelta(hours=1))])
        fire_cart_abandonments()
        abandonment = CartAbandonment.objects.get()
        assert abandonment.webhook_status == CartAbandonment.Webhook.PENDING
        assert abandonment.response_status == 503 and "503" in abandonment.last_error
        assert abandonment.next_attempt_at is not None and abandonment.next_attempt_at > now() + timedelta(
            seconds=20
        )

        assert cart_webhooks_deliver() == 0  # backing off
        assert cart_webhooks_deliver(now=now() + timedelta(minutes=1)) == 1
        assert cart_webhooks_deliver(now=now() + timedelta(hours=2)) == 0
        abandonment.refresh_from_db()
        assert abandonment.webhook_status == CartAbandonment.Webhook.DELIVERED
        assert abandonment.webhook_attempts == 2
        assert len(receiver.requests) == 2
        assert receiver.requests[0][1] == receiver.requests[1][1]  # the same body every attempt

    def test_it_gives_up_after_the_last_attempt(self, shop: Tenant, receiver: Receiver) -> None:
        receiver.answers = [500] * 20
        cart_events_record(tenant="acme", events=[event("add_to_cart", at=now() - timedelta(hours=1))])
        cart_checks_fire()
        later = now()
        for _ in range(10):
            later += timedelta(hours=2)
            cart_webhooks_deliver(now=later)
        abandonment = CartAbandonment.objects.get()
        assert abandonment.webhook_status == CartAbandonment.Webhook.FAILED
        assert len(receiver.requests) == abandonment.webhook_attempts == 6

        assert cart_webhooks_retry(ids=[abandonment.pk]) == 1  # the operator's admin action
        receiver.answers = []
        assert cart_webhooks_deliver() == 1

    def test_a_delivery_cut_off_mid_post_is_not_sent_again(self, shop: Tenant, receiver: Receiver) -> None:
        cart_events_record(tenant="acme", events=[event("add_to_cart", at=now() - timedelta(hours=1))])
        cart_checks_fire()
        # A sender claimed it and died before recording the outcome.
        CartAbandonment.objects.update(
            webhook_status=CartAbandonment.Webhook.SENDING,
            claim="dead",
            lease_until=now() - timedelta(seconds=1),
        )
        assert cart_webhooks_deliver() == 0
        abandonment = CartAbandonment.objects.get()
        assert abandonment.webhook_status == CartAbandonment.Webhook.FAILED
        assert "outcome unknown" in abandonment.last_error
        assert receiver.requests == []

    def test_without_a_webhook_url_it_records_the_abandonment_only(
        self, acme: Any, receiver: Receiver
    ) -> None:
        cart_events_record(tenant="acme", events=[event("add_to_cart", at=now() - timedelta(hours=1))])
        fire_cart_abandonments()
        assert CartAbandonment.objects.get().webhook_status == CartAbandonment.Webhook.NONE
        assert receiver.requests == []

    def test_each_cart_is_its_own_record_and_users_stay_apart(self, shop: Tenant, receiver: Receiver) -> None:
        added = now() - timedelta(hours=1)
        cart_events_record(
            tenant="acme",
            events=[event("add_to_cart", at=added), event("add_to_cart", at=added, user="u2"),
                    event("purchase", at=added + timedelta(minutes=3), user="u2")],
        )  # fmt: skip
        fire_cart_abandonments()
        assert list(CartAbandonment.objects.values_list("user_id", flat=True)) == ["u1"]
        assert len(receiver.requests) == 1


def test_two_beat_runs_at_once_fire_each_cart_once(transactional_db: None, receiver: Receiver) -> None:
    from tenants.services import tenant_create

    tenant_create(slug="acme", webhook_url=receiver.url)
    added = now() - timedelta(hours=1)
    cart_events_record(
        tenant="acme", events=[event("add_to_cart", at=added, user=f"u{i}") for i in range(20)]
    )
    errors: list[BaseException] = []

    def run() -> None:
        try:
            fire_cart_abandonments()
        except BaseException as exc:  # surfaced by the assertion below
            errors.append(exc)
        finally:
            from django.db import connection

            connection.close()

    threads = [threading.Thread(target=run) for _ in range(2)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=60)
    assert errors == []
    assert CartAbandonment.objects.count() == 20
    assert sorted(json.loads(body)["user_id"] for _, body in receiver.requests) == sorted(
        f"u{i}" for i in range(20)
    )


def test_beat_fires_the_checks_every_30_seconds() -> None:
    entry = settings.CELERY_BEAT_SCHEDULE["scoring.fire-cart-abandonments"]
    assert entry["task"] == "carts.fire_cart_abandonments"
    assert 30 <= float(entry["schedule"]) <= 60  # type: ignore[arg-type]
