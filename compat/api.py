"""SDK-compatible ingestion endpoints (Segment/RudderStack, PostHog) and the warnings read endpoint.

Thin views: read and decode the body, find the key where the SDK puts it, rate-limit, authenticate,
map each message, call `compat_ingest`, answer. The answers follow what the SDKs expect: success is
exactly 200 (some SDKs retry any other 2xx), and every error body carries top-level `code` and
`message` (RudderStack's SDK reads `code`; PostHog's reads `detail`) beside our error object.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from django.conf import settings
from drf_spectacular.utils import OpenApiResponse, extend_schema, inline_serializer
from rest_framework import exceptions, serializers
from rest_framework.request import Request
from rest_framework.response import Response
from rest_framework.views import APIView

from cloudscale_project.correlation import get_correlation_id
from cloudscale_project.errors import (
    ErrorDetail,
    MalformedJson,
    PayloadTooLarge,
    ValidationFailed,
    exception_handler,
)
from cloudscale_project.timeutil import utcnow
from compat.mapping import (
    POSTHOG,
    SEGMENT,
    SEGMENT_CALLS,
    Candidate,
    Rejection,
    map_posthog,
    map_segment,
    oversized,
)
from compat.selectors import warnings_list
from compat.services import SdkReceipt, compat_ingest
from compat.wire import decode_body, parse_json, posthog_key, read_body, segment_key
from events.api import ErrorSchema
from events.enrichment import client_ip
from events.ingestion import RequestContext
from events.middleware import enforce_rate_limits
from events.stores.base import InvalidCursor, decode_cursor
from events.throttling import RateDecision
from tenants.authentication import authenticate_key, tenant_of
from tenants.models import Tenant
from tenants.services import key_lookups_per_request

_CORS_PREFLIGHT = {
    "Access-Control-Allow-Origin": "*",
    "Access-Control-Allow-Methods": "POST, OPTIONS",
    "Access-Control-Allow-Headers": "Authorization, Content-Type, Content-Encoding",
    "Access-Control-Max-Age": "86400",
}


def _with_top_level_error(protocol: str) -> Callable[[Exception, dict[str, Any]], Response | None]:
    def handler(exc: Exception, context: dict[str, Any]) -> Response | None:
        response = exception_handler(exc, context)
        if response is not None and isinstance(response.data, dict) and "error" in response.data:
            error = response.data["error"]
            extra = {"code": error["code"], "message": error["message"]}
            if protocol == POSTHOG:
                extra["detail"] = error["message"]
            response.data = {**extra, **response.data}
        return response

    return handler


class _SdkIngestView(APIView):
    """What the SDK endpoints share. The key is found in the request by each protocol's rules and
    checked by `authenticate_key`, the native endpoints' own check."""

    authentication_classes = ()
    permission_classes = ()
    protocol = ""

    def get_exception_handler(self) -> Callable[[Exception, dict[str, Any]], Response | None]:
        return _with_top_level_error(self.protocol)

    def options(self, request: Request, *args: Any, **kwargs: Any) -> Response:  # type: ignore[override]  # as DRF's own stub
        """CORS preflight of browser SDKs (posthog-js, Segment's analytics.js): the key is a write
        key sent in the request, not a cookie, so any origin may post."""
        return Response(status=200, headers=_CORS_PREFLIGHT)

    def finalize_response(self, request: Request, response: Response, *args: Any, **kwargs: Any) -> Response:
        response = super().finalize_response(request, response, *args, **kwargs)
        response["Access-Control-Allow-Origin"] = "*"
        return response

    def get_authenticate_header(self, request: Request) -> str:
        # Without one DRF turns a 401 into a 403; the SDKs' keys are a Basic user name or a token.
        return 'Basic realm="cloudscale"' if self.protocol == SEGMENT else 'Bearer realm="api"'

    body_bytes = 0  # of the decoded body: one request per view instance

    def payload(self, request: Request) -> Any:
        limit = settings.COMPAT_MAX_BODY_BYTES
        body = read_body(request._request, limit=limit)
        encoding = request.headers.get("Content-Encoding", "")
        decoded = decode_body(body, content_encoding=encoding, limit=limit)
        self.body_bytes = len(decoded)
        return parse_json(decoded)

    def map_all(self, messages: list[Any], mapper: Callable[[Any], Candidate | Rejection]) -> list[Any]:
        if self.body_bytes <= settings.MAX_EVENT_BYTES:  # no message can be over the limit: skip sizing
            return [mapper(message) for message in messages]
        limit = settings.MAX_EVENT_BYTES
        return [oversized(message, limit=limit) or mapper(message) for message in messages]

    def ingest(
        self,
        request: Request,
        *,
        key: str | None,
        messages: list[Any],
        mapper: Callable[[Any], Candidate | Rejection],
    ) -> Response:
        started_at = utcnow()
        # Outside /api/, so the rate-limit middleware does not scope the key lookups: one here.
        with key_lookups_per_request():
            decision = enforce_rate_limits(
                ip=client_ip(request._request), key=key, events=lambda: len(messages)
            )
            if key is None:
                raise exceptions.NotAuthenticated("No write key / API key: send it as the SDK does.")
            tenant = authenticate_key(key).tenant
        if len(messages) > settings.COMPAT_MAX_EVENTS:
            raise PayloadTooLarge(
                f"a request may carry at most {settings.COMPAT_MAX_EVENTS} events, got {len(messages)}",
                [ErrorDetail("batch", f"more than {settings.COMPAT_MAX_EVENTS} events")],
            )
        receipt = compat_ingest(
            protocol=self.protocol,
            mapped=self.map_all(messages, mapper),
            context=_context(request, tenant, started_at=started_at),
        )
        return self.answer(receipt, decision)

    def answer(self, receipt: SdkReceipt, decision: RateDecision) -> Response:
        body: dict[str, Any] = {**receipt.counts(), "correlation_id": get_correlation_id()}
        return Response(body, status=200, headers=decision.headers())


def _context(request: Request, tenant: Tenant, *, started_at: Any) -> RequestContext:
    return RequestContext(
        tenant=tenant.slug,
        received_at=started_at,
        ip=client_ip(request._request),
        user_agent=request.headers.get("User-Agent", ""),
        correlation_id=get_correlation_id(),
    )


def _no_events(field_name: str) -> ValidationFailed:
    return ValidationFailed("The request carries no events.", [ErrorDetail(field_name, "no events")])


class SegmentIngestView(_SdkIngestView):
    """Segment / RudderStack: POST /v1/batch, and /v1/<call> with one message."""

    protocol = SEGMENT

    @extend_schema(exclude=True)  # the SDKs' protocol, documented in README, not our API design
    def post(self, request: Request, call: str | None = None) -> Response:
        payload = self.payload(request)
        if not isinstance(payload, dict):
            raise MalformedJson("the body must be a JSON object")
        if call is None:
            messages = payload.get("batch")
            if not isinstance(messages, list) or not messages:
                raise _no_events("batch")
        else:
            messages = [payload]
        batch_sent_at = payload.get("sentAt") if call is None else None
        response = self.ingest(
            request,
            key=segment_key(request._request, payload),
            messages=messages,
            mapper=lambda message: map_segment(message, call=call, batch_sent_at=batch_sent_at),
        )
        response.data["success"] = True  # what Segment's own API answers
        return response


def _posthog_messages(payload: Any) -> list[Any]:
    """posthog-python: {"batch": [...]}; posthog-js and others: {"data": [...]}, a bare list, or
    one event as the body itself (/capture/)."""
    if isinstance(payload, list):
        return payload
    if not isinstance(payload, dict):
        return []
    for name in ("batch", "data"):
        value = payload.get(name)
        if isinstance(value, list):
            return value
        if isinstance(value, dict):
            return [value]
    return [payload] if "event" in payload else []


class PostHogIngestView(_SdkIngestView):
    """PostHog: POST /batch/, /capture/, /e/, /i/v0/e/ (trailing slash optional)."""

    protocol = POSTHOG

    @extend_schema(exclude=True)
    def post(self, request: Request) -> Response:
        payload = self.payload(request)
        messages = _posthog_messages(payload)
        if not messages:
            raise _no_events("batch")
        batch_sent_at = payload.get("sent_at") if isinstance(payload, dict) else None
        response = self.ingest(
            request,
            key=posthog_key(request._request, payload, messages),
            messages=messages,
            mapper=lambda message: map_posthog(message, batch_sent_at=batch_sent_at),
        )
        response.data["status"] = 1  # what PostHog's capture answers
        return response


# --- GET /api/ingestion-warnings ----------------------------------------------------------------------

MAX_PAGE = 1000
DEFAULT_PAGE = 100


class WarningFilterSerializer(serializers.Serializer[Any]):
    code = serializers.CharField(required=False, max_length=32, help_text="Only warnings with this code.")
    limit = serializers.IntegerField(required=False, min_value=1, max_value=MAX_PAGE, default=DEFAULT_PAGE)
    cursor = serializers.CharField(required=False, max_length=512, help_text="`next` of the previous page.")

    def validate_cursor(self, value: str) -> str:
        try:
            _time, last_id = decode_cursor(value)
            int(last_id)
        except (InvalidCursor, ValueError):
            raise serializers.ValidationError("not a cursor this API returned") from None
        return value


class IngestionWarningSerializer(serializers.Serializer[Any]):
    time = serializers.DateTimeField(help_text="When the request arrived.")
    protocol = serializers.ChoiceField(choices=["segment", "posthog"])
    event_name = serializers.CharField()
    event_id = serializers.CharField(allow_null=True)
    code = serializers.CharField()
    field = serializers.CharField(allow_null=True)
    message = serializers.CharField()
    correlation_id = serializers.CharField(allow_null=True)


class IngestionWarningListView(APIView):
    """GET /api/ingestion-warnings: the tenant's warnings, newest first, kept 30 days."""

    @extend_schema(
        operation_id="ingestion_warnings_list",
        summary="Why events sent through SDK endpoints were rejected or not mapped",
        parameters=[WarningFilterSerializer],
        responses={
            200: inline_serializer(
                "IngestionWarningPage",
                {
                    "results": IngestionWarningSerializer(many=True),
                    "next": serializers.CharField(allow_null=True, help_text="Cursor of the next page."),
                },
            ),
            400: OpenApiResponse(ErrorSchema, "validation_error (details name the parameter)"),
            401: OpenApiResponse(ErrorSchema, "missing or wrong API key"),
            403: OpenApiResponse(ErrorSchema, "disabled tenant"),
        },
    )
    def get(self, request: Request) -> Response:
        filters = WarningFilterSerializer(data=request.query_params.dict())
        if not filters.is_valid():
            raise ValidationFailed(
                "Invalid query parameters.",
                [
                    ErrorDetail(name, str(message))
                    for name, messages in filters.errors.items()
                    for message in (messages if isinstance(messages, list) else [messages])
                ],
            )
        params = filters.validated_data
        page = warnings_list(
            tenant=tenant_of(request).slug,
            limit=params["limit"],
            cursor=params.get("cursor"),
            code=params.get("code"),
        )
        return Response({"results": page.results, "next": page.next_cursor})


SEGMENT_CALL_PATTERN = "|".join(call for call in SEGMENT_CALLS)
