"""Rate limiting of /api/events* in front of everything else (docs/api.md, "Rate limits").

It runs before authentication, so floods are refused before any database work, and it puts the
RateLimit-* headers on every /api/events* response, including 401s and 400s.
"""

from __future__ import annotations

import logging
from collections.abc import Callable

import orjson
from django.conf import settings
from django.core.exceptions import RequestDataTooBig
from django.http import HttpRequest, HttpResponse, JsonResponse

from cloudscale_project.errors import BrokerUnavailable, RateLimited, error_body
from cloudscale_project.metrics import RATE_LIMIT_REJECTIONS
from cloudscale_project.state import STATE_ERRORS
from cloudscale_project.timeutil import utcnow
from events.enrichment import client_ip
from events.ledger import ledger_record
from events.throttling import check_rate_limits
from tenants.authentication import api_key_from_headers
from tenants.services import tenant_for_key

logger = logging.getLogger(__name__)

RATE_LIMITED_PREFIX = "/api/events"


def _events_in(request: HttpRequest) -> int:
    """How many events a refused request carried, for the ledger (1 when the body is not a batch)."""
    if not request.path.endswith("/batch"):
        return 1
    try:
        events = orjson.loads(request.body).get("events")
    except (orjson.JSONDecodeError, AttributeError, ValueError, RequestDataTooBig):
        return 1
    return len(events) if isinstance(events, list) and events else 1


def _render(exc: RateLimited | BrokerUnavailable) -> JsonResponse:
    response = JsonResponse(error_body(exc.code, exc.message), status=exc.status)
    for name, value in exc.headers.items():
        response[name] = value
    return response


class RateLimitMiddleware:
    def __init__(self, get_response: Callable[[HttpRequest], HttpResponse]) -> None:
        self.get_response = get_response

    def __call__(self, request: HttpRequest) -> HttpResponse:
        if not request.path.startswith(RATE_LIMITED_PREFIX):
            return self.get_response(request)
        tenant_slug, events = "", 1
        if settings.RATE_LIMIT_TENANT_EVENTS_PER_SECOND and request.method == "POST":
            key = api_key_from_headers(request.headers)
            tenant = tenant_for_key(key) if key else None
            tenant_slug, events = (tenant.slug, _events_in(request)) if tenant else ("", 1)
        try:
            decision = check_rate_limits(ip=client_ip(request), tenant=tenant_slug, events=events)
        except STATE_ERRORS:
            logger.warning("rate-limit state unavailable", exc_info=True)
            return _render(BrokerUnavailable(retry_after=settings.BROKER_RETRY_AFTER_SECONDS))
        if not decision.allowed:
            RATE_LIMIT_REJECTIONS.inc()
            self._count_refused(request)
            scope = {"ip": "this client address", "global": "the platform", "tenant": "this tenant"}
            return _render(
                RateLimited(
                    f"Rate limit of {scope.get(decision.limited_by, decision.limited_by)} exceeded; "
                    f"retry in {decision.retry_after_seconds} s.",
                    decision.retry_after_seconds,
                    decision.headers(),
                )
            )
        response = self.get_response(request)
        for name, value in decision.headers().items():
            response[name] = value
        return response

    @staticmethod
    def _count_refused(request: HttpRequest) -> None:
        key = api_key_from_headers(request.headers)
        tenant = tenant_for_key(key) if key else None
        if tenant is None:
            return  # no tenant to account to: an anonymous flood is not in any tenant's ledger
        try:
            ledger_record(
                tenant=tenant.slug, received_at=utcnow(), counts={"rate_limited": _events_in(request)}
            )
        except STATE_ERRORS:
            logger.warning("ledger unavailable while refusing a request of %s", tenant.slug)
