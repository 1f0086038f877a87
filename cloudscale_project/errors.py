"""The one error shape of the API (docs/api.md, "Errors") and the one handler that renders it.

{"error": {"code", "message", "details": [{"field", "message"}]}, "correlation_id"}
"""

from __future__ import annotations

import logging
import math
from dataclasses import dataclass, field
from typing import Any

from django.http import Http404, HttpRequest, JsonResponse
from rest_framework import exceptions as drf_exceptions
from rest_framework.response import Response

from cloudscale_project.correlation import get_correlation_id

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class ErrorDetail:
    field: str
    message: str

    def as_dict(self) -> dict[str, str]:
        return {"field": self.field, "message": self.message}


@dataclass
class ApplicationError(Exception):
    """An error the API reports to the client, with its HTTP status and stable code."""

    message: str
    details: list[ErrorDetail] = field(default_factory=list)
    headers: dict[str, str] = field(default_factory=dict)
    status: int = 400
    code: str = "bad_request"

    def __str__(self) -> str:
        return self.message


class ValidationFailed(ApplicationError):
    def __init__(self, message: str, details: list[ErrorDetail] | None = None) -> None:
        super().__init__(message, details or [], status=400, code="validation_error")


class MalformedJson(ApplicationError):
    def __init__(self, message: str) -> None:
        super().__init__(message, [ErrorDetail("body", message)], status=400, code="malformed_json")


class PayloadTooLarge(ApplicationError):
    def __init__(self, message: str, details: list[ErrorDetail] | None = None) -> None:
        super().__init__(message, details or [], status=413, code="payload_too_large")


class UnsupportedMediaType(ApplicationError):
    def __init__(self, content_type: str) -> None:
        super().__init__(
            f"Content-Type must be application/json, got {content_type or 'nothing'!r}",
            [ErrorDetail("Content-Type", "expected application/json")],
            status=415,
            code="unsupported_media_type",
        )


class RateLimited(ApplicationError):
    def __init__(self, message: str, retry_after: int, headers: dict[str, str]) -> None:
        super().__init__(
            message, [], headers={**headers, "Retry-After": str(retry_after)}, status=429, code="rate_limited"
        )


class BrokerUnavailable(ApplicationError):
    def __init__(self, retry_after: int) -> None:
        super().__init__(
            "The event could not be durably published; nothing was accepted. Retry later.",
            [],
            headers={"Retry-After": str(retry_after)},
            status=503,
            code="broker_unavailable",
        )


class SharedStateUnavailable(ApplicationError):
    """A read could not be decided because the shared state (rate limits, ledger) is unreachable."""

    def __init__(self, retry_after: int) -> None:
        super().__init__(
            "The shared state is unavailable; nothing was read. Retry later.",
            [],
            headers={"Retry-After": str(retry_after)},
            status=503,
            code="store_unavailable",
        )


class NotFound(ApplicationError):
    def __init__(self, message: str) -> None:
        super().__init__(message, [], status=404, code="not_found")


def error_body(code: str, message: str, details: list[dict[str, str]] | None = None) -> dict[str, Any]:
    return {
        "error": {"code": code, "message": message, "details": details or []},
        "correlation_id": get_correlation_id(),
    }


_DRF_CODES: dict[type[drf_exceptions.APIException], str] = {
    drf_exceptions.NotAuthenticated: "not_authenticated",
    drf_exceptions.AuthenticationFailed: "authentication_failed",
    drf_exceptions.PermissionDenied: "permission_denied",
    drf_exceptions.NotFound: "not_found",
    drf_exceptions.MethodNotAllowed: "method_not_allowed",
    drf_exceptions.NotAcceptable: "not_acceptable",
    drf_exceptions.UnsupportedMediaType: "unsupported_media_type",
    drf_exceptions.ParseError: "malformed_json",
    drf_exceptions.ValidationError: "validation_error",
    drf_exceptions.Throttled: "rate_limited",
}


def _drf_details(detail: Any, prefix: str = "") -> list[dict[str, str]]:
    if isinstance(detail, dict):
        out: list[dict[str, str]] = []
        for key, value in detail.items():
            out.extend(_drf_details(value, f"{prefix}.{key}" if prefix else str(key)))
        return out
    if isinstance(detail, list):
        return [item for value in detail for item in _drf_details(value, prefix)]
    return [{"field": prefix or "request", "message": str(detail)}]


class StoreUnavailable(Exception):
    """A transient event-store failure (throttling, 5xx, connection): retry later, never drop.

    `retry_after` is the store's own hint in seconds, when it gave one.
    """

    def __init__(self, message: str, *, retry_after: float | None = None) -> None:
        super().__init__(message)
        self.retry_after = retry_after


def exception_handler(exc: Exception, context: dict[str, Any]) -> Response | None:
    """DRF's EXCEPTION_HANDLER: every error, ours or DRF's, leaves in that one shape."""
    if isinstance(exc, ApplicationError):
        body = error_body(exc.code, exc.message, [d.as_dict() for d in exc.details])
        return Response(body, status=exc.status, headers=exc.headers)
    if isinstance(exc, StoreUnavailable):
        retry_after = max(1, math.ceil(exc.retry_after or 1))
        body = error_body("store_unavailable", "The event store is unavailable; retry later.")
        return Response(body, status=503, headers={"Retry-After": str(retry_after)})
    if isinstance(exc, Http404):
        return Response(error_body("not_found", "Not found."), status=404)
    if isinstance(exc, drf_exceptions.APIException):
        code = _DRF_CODES.get(type(exc), str(exc.default_code))
        details = _drf_details(exc.detail) if isinstance(exc, drf_exceptions.ValidationError) else []
        message = "Invalid request." if details else str(exc.detail)
        headers: dict[str, str] = {}
        if isinstance(exc, drf_exceptions.NotAuthenticated | drf_exceptions.AuthenticationFailed):
            headers["WWW-Authenticate"] = 'Bearer realm="api"'
        return Response(error_body(code, message, details), status=exc.status_code, headers=headers)
    return None


def json_404(request: HttpRequest, exception: Exception | None = None) -> JsonResponse:
    return JsonResponse(error_body("not_found", f"No such endpoint: {request.path}"), status=404)


def json_500(request: HttpRequest) -> JsonResponse:
    logger.error("unhandled error on %s", request.path)
    return JsonResponse(error_body("internal_error", "Internal server error."), status=500)
