"""Rate limiting of the API in front of everything else (docs/api.md, "Rate limits").

It runs before the views, so floods are refused before any event work, and it puts the
RateLimit-* headers on every rate-limited response, including 401s and 400s. It looks the API key
up first (the per-process key cache; none for a request without a key): a request spends the
tenants' global window only when it belongs to an active tenant; everything else spends the
anonymous one.
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
from tenants.models import Tenant
from tenants.services import tenant_for_key

logger = logging.getLogger(__name__)

RATE_LIMITED_PREFIX = "/api/"
# The schema and its browsable UI are documentation, not tenant data: not limited.
_UNLIMITED_PREFIXES = ("/api/schema/", "/api/docs/")
_READ_METHODS = frozenset({"GET", "HEAD"})


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


_SCOPES = {
    "ip": "this client address",
    "global": "the platform",
    "anonymous": "unauthenticated requests",
    "share": "this tenant's share of the platform",
    "tenant": "this tenant",
    "reads": "this tenant's reads",
}


class RateLimitMiddleware:
    def __init__(self, get_response: Callable[[HttpRequest], HttpResponse]) -> None:
        self.get_response = get_response

    def __call__(self, request: HttpRequest) -> HttpResponse:
        if not request.path.startswith(RATE_LIMITED_PREFIX) or request.path.startswith(_UNLIMITED_PREFIXES):
            return self.get_response(request)
        key = api_key_from_headers(request.headers)
        tenant = tenant_for_key(key) if key else None
        active = tenant.slug if tenant is not None and tenant.active else ""
        # Parsing the body for its event count is only worth it when the events/s quota is on.
        quota = settings.RATE_LIMIT_TENANT_EVENTS_PER_SECOND and active and request.method == "POST"
        events = _events_in(request) if quota else 1
        try:
            decision = check_rate_limits(
                ip=client_ip(request), tenant=active, events=events, read=request.method in _READ_METHODS
            )
        except STATE_ERRORS:
            logger.warning("rate-limit state unavailable", exc_info=True)
            return _render(BrokerUnavailable(retry_after=settings.BROKER_RETRY_AFTER_SECONDS))
        if not decision.allowed:
            RATE_LIMIT_REJECTIONS.inc()
            self._count_refused(request, tenant)
            return _render(
                RateLimited(
                    f"Rate limit of {_SCOPES.get(decision.limited_by, decision.limited_by)} exceeded; "
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
    def _count_refused(request: HttpRequest, tenant: Tenant | None) -> None:
        if tenant is None or request.method != "POST":
            return  # no events to account for (an anonymous flood is in no tenant's ledger; reads carry none)
        try:
            ledger_record(
                tenant=tenant.slug, received_at=utcnow(), counts={"rate_limited": _events_in(request)}
            )
        except STATE_ERRORS:
            logger.warning("ledger unavailable while refusing a request of %s", tenant.slug)
