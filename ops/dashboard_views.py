"""The admin's overview page and the JSON it draws from (staff only: every view goes through
`admin.site.admin_view`, which sends anyone else to the admin login)."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from django.contrib import admin
from django.http import HttpRequest, HttpResponse, JsonResponse
from django.template.response import TemplateResponse
from django.urls import path, reverse
from django.views.decorators.http import require_GET

from ops.dashboard import (
    DEFAULT_HOURS,
    MAX_HOURS,
    dashboard_dead_letters,
    dashboard_fraud,
    dashboard_ledger,
    dashboard_platform,
    dashboard_tenants,
    dashboard_warnings,
)

# How often the open page fetches its data again (beat samples every 30 s by default).
REFRESH_SECONDS = 30


def _hours(request: HttpRequest) -> int:
    try:
        return max(1, min(MAX_HOURS, int(request.GET.get("hours", DEFAULT_HOURS))))
    except ValueError:
        return DEFAULT_HOURS


def _tenant(request: HttpRequest) -> str | None:
    return request.GET.get("tenant") or None


@require_GET
def overview(request: HttpRequest) -> HttpResponse:
    tenants = dashboard_tenants()
    context = {
        **admin.site.each_context(request),
        "title": "Platform overview",
        "tenants": tenants,
        "tenant": _tenant(request),
        "hours": _hours(request),
        "refresh_seconds": REFRESH_SECONDS,
        "api_base": request.build_absolute_uri("/").rstrip("/"),
    }
    context["overview_config"] = {
        "tenant": context["tenant"] or "",
        "hours": context["hours"],
        "refreshSeconds": REFRESH_SECONDS,
        "urls": {
            "ledger": reverse("ops-overview-ledger"),
            "platform": reverse("ops-overview-platform"),
            "deadLetters": reverse("ops-overview-dead-letters"),
            "fraud": reverse("ops-overview-fraud"),
            "warnings": reverse("ops-overview-warnings"),
        },
    }
    return TemplateResponse(request, "ops/overview.html", context)


def _json_view(build: Callable[[HttpRequest], dict[str, Any]]) -> Callable[[HttpRequest], JsonResponse]:
    @require_GET
    def view(request: HttpRequest) -> JsonResponse:
        return JsonResponse(build(request))

    view.__name__ = build.__name__
    return view


ledger_data = _json_view(lambda r: dashboard_ledger(tenant=_tenant(r), hours=_hours(r)))
platform_data = _json_view(lambda r: dashboard_platform(hours=_hours(r)))
dead_letter_data = _json_view(lambda r: dashboard_dead_letters(tenant=_tenant(r), hours=_hours(r)))
fraud_data = _json_view(lambda r: dashboard_fraud(tenant=_tenant(r), hours=_hours(r)))
warning_data = _json_view(lambda r: dashboard_warnings(tenant=_tenant(r)))


def overview_urls() -> list[Any]:
    """Mounted under /admin/overview/ (before the admin's own catch-all) in cloudscale_project/urls.py."""
    staff = admin.site.admin_view
    return [
        path("", staff(overview), name="ops-overview"),
        path("ledger.json", staff(ledger_data), name="ops-overview-ledger"),
        path("platform.json", staff(platform_data), name="ops-overview-platform"),
        path("dead-letters.json", staff(dead_letter_data), name="ops-overview-dead-letters"),
        path("fraud.json", staff(fraud_data), name="ops-overview-fraud"),
        path("warnings.json", staff(warning_data), name="ops-overview-warnings"),
    ]
