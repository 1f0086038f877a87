"""Rate limiting of the API in front of everything else (docs/api.md, "Rate limits").

It runs before the views, so floods are refused before any event work, and it puts the
RateLimit-* headers on every rate-limited response, including 401s and 400s. It looks the API key
up first (the per-process key cache; none for a request without a key): a request spends the
tenants' global window only when it belongs to an active tenant; everything else spends the
anonymous one.
"""

from __future__ import annotations

import contextlib
import logging
from collections.abc import Callable

import orjson
from django.conf import settings
from django.core.exceptions import RequestDataTooBig
from django.http import HttpRequest, HttpResponse, JsonResponse

from cloudscale_project.errors import BrokerUnavailable, RateLimited, SharedStateUnavailable, error_body
from cloudscale_project.metrics import RATE_LIMIT_REJECTIONS
from cloudscale_project.state import STATE_ERRORS
from cloudscale_project.timeutil import utcnow
from events.enrichment import client_ip
from events.ingestion import expecting_publish
from events.ledger import ledger_record
from events.throttling import RateDecision, check_rate_limits
from tenants.authentication import api_key_from_headers
from tenants.models import Tenant
from tenants.services import (
    KeyGuess,
    api_key_confirm,
    api_key_guess,
    key_lookups_per_request,
    tenant_for_key,
)

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


def _render(exc: RateLimited | BrokerUnavailable | SharedStateUnavailable) -> JsonResponse:
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


def enforce_rate_limits(
    *,
    ip: str,
    key: str | None,
    events: Callable[[], int],
    quota: bool = True,
    read: bool = False,
    guess: KeyGuess | None = None,
) -> RateDecision:
    """Decide a request's rate limits before it is authenticated; raise RateLimited (its events
    counted `rate_limited` in the key's tenant's ledger) or BrokerUnavailable (state unreachable).

    The key is looked up first (the per-process key cache): a request spends the tenants' global
    window only when it belongs to an active tenant. A key found in the cache is confirmed by the
    rate-limit script itself, which reads the cache's version in the same round trip (no GET of
    its own) and decides nothing if a tenant or key changed since: then the key is looked up again
    and the limits are decided for what it is now. `events` says how many events the request
    carries; it is only asked when needed (the per-tenant quota or a refusal), because finding out
    may mean parsing the body. `quota=False` skips the per-tenant events/s quota; `read=True` spends
    the tenant's read budget. `guess` is the key's cached lookup when the caller has made it
    already (`api_key_guess`). The SDK-compatible endpoints (compat/) call this too, with the key
    and the event count they read from their own bodies.
    """
    if guess is None and key:
        guess = api_key_guess(key)
    tenant = guess.api_key.tenant if guess is not None else (tenant_for_key(key) if key else None)
    active = _active_slug(tenant)
    cost = events() if quota and active and settings.RATE_LIMIT_TENANT_EVENTS_PER_SECOND else 1
    try:
        cached_under = (guess.version_key, guess.version) if guess is not None else None
        decision = check_rate_limits(ip=ip, tenant=active, events=cost, read=read, cached_under=cached_under)
        if guess is not None:
            # The lookup came from this process's cache; the script checked the cache's version.
            confirmed = api_key_confirm(guess, decision.key_version if decision.stale else guess.version)
            if decision.stale:  # the key or its tenant changed since it was cached: decide anew
                tenant = confirmed.tenant if confirmed is not None else None
                active = _active_slug(tenant)
                cost = events() if quota and active and settings.RATE_LIMIT_TENANT_EVENTS_PER_SECOND else 1
                decision = check_rate_limits(ip=ip, tenant=active, events=cost, read=read)
    except STATE_ERRORS:
        logger.warning("rate-limit state unavailable", exc_info=True)
        if read:  # nothing to publish: the read cannot reach the shared state
            raise SharedStateUnavailable(retry_after=settings.BROKER_RETRY_AFTER_SECONDS) from None
        raise BrokerUnavailable(retry_after=settings.BROKER_RETRY_AFTER_SECONDS) from None
    if not decision.allowed:
        RATE_LIMIT_REJECTIONS.inc()
        if not read:
            _count_refused(tenant, events)
        raise RateLimited(
            f"Rate limit of {_SCOPES.get(decision.limited_by, decision.limited_by)} exceeded; "
            f"retry in {decision.retry_after_seconds} s.",
            decision.retry_after_seconds,
            decision.headers(),
        )
    return decision


def _active_slug(tenant: Tenant | None) -> str:
    return tenant.slug if tenant is not None and tenant.active else ""


def _count_refused(tenant: Tenant | None, events: Callable[[], int]) -> None:
    if tenant is None:
        return  # no tenant to account to: an anonymous flood is in no tenant's ledger
    try:
        ledger_record(tenant=tenant.slug, received_at=utcnow(), counts={"rate_limited": events()})
    except STATE_ERRORS:
        logger.warning("ledger unavailable while refusing a request of %s", tenant.slug)


_SINGLE_EVENT_PATH = "/api/events"


def _announced(request: HttpRequest, guess: KeyGuess | None) -> contextlib.AbstractContextManager[None]:
    """A single-event POST with a known key announces itself to its tenant's group commit before
    its rate limits, authentication and parsing, so a group flushing meanwhile waits for it.

    Announced only where the ingestion service starts, the concurrent requests still on their way
    there were not waited for: on a machine whose cores were slow, a group under 50 clients
    gathered 3.9-4.2 events, and with this (and the 32 ms linger) 6.3-6.8 (docs/benchmarks.md,
    "Levers, twenty-third round"). The key is the cached guess the rate limiter confirms; a wrong
    guess only makes a group wait for a request that never joins it, within the linger."""
    if guess is None or request.method != "POST" or request.path != _SINGLE_EVENT_PATH:
        return contextlib.nullcontext()
    tenant = guess.api_key.tenant
    return expecting_publish(tenant.slug, 1) if tenant.active else contextlib.nullcontext()


class RateLimitMiddleware:
    def __init__(self, get_response: Callable[[HttpRequest], HttpResponse]) -> None:
        self.get_response = get_response

    def __call__(self, request: HttpRequest) -> HttpResponse:
        if not request.path.startswith(RATE_LIMITED_PREFIX) or request.path.startswith(_UNLIMITED_PREFIXES):
            return self.get_response(request)
        key = api_key_from_headers(request.headers)
        guess = api_key_guess(key) if key else None
        with key_lookups_per_request(), _announced(request, guess):
            try:
                decision = enforce_rate_limits(
                    ip=client_ip(request),
                    key=key,
                    guess=guess,
                    events=lambda: _events_in(request),
                    quota=request.method == "POST",
                    read=request.method in _READ_METHODS,
                )
            except (RateLimited, BrokerUnavailable, SharedStateUnavailable) as exc:
                return _render(exc)
            response = self.get_response(request)
        for name, value in decision.headers().items():
            response[name] = value
        return response
