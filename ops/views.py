"""Liveness and readiness probes (outside /api/: no key needed)."""

from __future__ import annotations

from django.http import HttpRequest, JsonResponse
from django.views.decorators.http import require_GET

from cloudscale_project.errors import error_body
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
