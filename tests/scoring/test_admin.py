"""The admin pages of scores, carts and fraud render with data, and search scores by user."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
from django.test import Client

from carts.models import CartAbandonment
from carts.services import cart_checks_fire, cart_events_record
from fraud.services import fraud_evaluate_batch
from scoring.services import score_apply_batch
from tenants.models import Tenant
from tests.carts.test_cart_abandonment import event as cart_event
from tests.fraud.test_services import burst
from tests.scoring.test_services import event

pytestmark = [pytest.mark.django_db]


@pytest.fixture
def data(acme: Any) -> None:
    score_apply_batch(tenant="acme", events=[event("purchase", user="alice"), event("click", user="bob")])
    fraud_evaluate_batch(tenant="acme", events=burst("purchase", 4))
    cart_events_record(
        tenant="acme", events=[cart_event("add_to_cart", at=datetime.now(UTC) - timedelta(hours=1))]
    )
    cart_checks_fire()


@pytest.mark.parametrize(
    "path",
    [
        "/admin/scoring/userscore/",
        "/admin/carts/cartcheck/",
        "/admin/carts/cartabandonment/",
        "/admin/fraud/fraudalert/",
        "/admin/fraud/fraudrulesetting/",
        "/admin/fraud/fraudrulesetting/add/?rule=login_failed_velocity",
    ],
)
def test_it_renders_the_admin_pages(admin_client: Client, data: None, path: str) -> None:
    assert admin_client.get(path).status_code == 200


def test_it_searches_scores_by_user(admin_client: Client, data: None) -> None:
    page = admin_client.get("/admin/scoring/userscore/", {"q": "alice"}).content.decode()
    assert "alice" in page and "bob" not in page


def test_it_starts_the_rule_form_from_the_rules_defaults(admin_client: Client, data: None) -> None:
    form = (
        admin_client.get("/admin/fraud/fraudrulesetting/add/?rule=login_failed_velocity")
        .context["adminform"]
        .form
    )
    assert (form.initial["threshold"], form.initial["window_seconds"]) == (5, 300)


def test_operators_can_retry_a_failed_webhook(admin_client: Client, data: None) -> None:
    abandonment = CartAbandonment.objects.get()
    CartAbandonment.objects.update(webhook_status=CartAbandonment.Webhook.FAILED)
    Tenant.objects.filter(slug="acme").update(webhook_url="https://hooks.example.com/cart")
    admin_client.post(
        "/admin/carts/cartabandonment/",
        {"action": "retry_webhooks", "_selected_action": [abandonment.pk]},
    )
    abandonment.refresh_from_db()
    assert abandonment.webhook_status == CartAbandonment.Webhook.PENDING
    assert abandonment.webhook_url == "https://hooks.example.com/cart" and abandonment.webhook_attempts == 0
