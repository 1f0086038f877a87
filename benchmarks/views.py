"""The latency floor: a trivial Django view served by the same gunicorn as the API (`make bench` only)."""

from __future__ import annotations

from django.http import HttpRequest, HttpResponse
from django.views.decorators.csrf import csrf_exempt
from django.views.decorators.http import require_POST

_BODY = b'{"status":"accepted"}'


@csrf_exempt  # the API's views are DRF views without session auth, so no CSRF check either
@require_POST
def noop(request: HttpRequest) -> HttpResponse:
    """Reads the body and answers 202: Django's request/response cycle and middleware, nothing else."""
    _ = request.body
    return HttpResponse(_BODY, status=202, content_type="application/json")
