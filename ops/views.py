"""Liveness and readiness probes (outside /api/: no key needed)."""

from __future__ import annotations

from django.http import HttpRequest, HttpResponse, JsonResponse
from django.views.decorators.http import require_GET
from prometheus_client import CONTENT_TYPE_LATEST

from cloudscale_project.errors import error_body
from cloudscale_project.metrics import render_metrics
from ops.health import readiness


@require_GET
def healthz(request: HttpRequest) -> JsonResponse:
    return JsonResponse({"status": "alive"})


@require_GET
def readyz(request: HttpRequest) -> JsonResponse:
    checks = readiness()
    down = [name for name, result in checks.items() if result != "ok"]
    if not down:
        return JsonResponse({"status": "ready", "checks": checks})
    body = error_body(
        "not_ready",
        f"Not ready: {', '.join(down)} unavailable.",
        [{"field": name, "message": checks[name]} for name in down],
    )
    body["checks"] = checks
    return JsonResponse(body, status=503)


@require_GET
def metrics(request: HttpRequest) -> HttpResponse:
    """Prometheus scrape endpoint: the API processes' own metrics plus the platform-wide ones."""
    return HttpResponse(render_metrics(), content_type=CONTENT_TYPE_LATEST)
