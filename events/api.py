"""Ingestion endpoints: one thin view per operation (parse → call one service → render)."""

from __future__ import annotations

from datetime import datetime
from typing import Any

from django.conf import settings
from django.core.exceptions import RequestDataTooBig
from drf_spectacular.types import OpenApiTypes
from drf_spectacular.utils import OpenApiParameter, OpenApiResponse, extend_schema, inline_serializer
from rest_framework import serializers
from rest_framework.request import Request
from rest_framework.response import Response
from rest_framework.views import APIView

from cloudscale_project.correlation import get_correlation_id
from cloudscale_project.errors import ErrorDetail, PayloadTooLarge, ValidationFailed
from cloudscale_project.timeutil import parse_iso, utcnow
from events.enrichment import client_ip
from events.ingestion import RequestContext, body_too_large, ingest_events, parse_json_body
from events.ledger import ledger_report, ledger_window
from events.schemas import EVENT_TYPES
from tenants.authentication import CanIngest, tenant_of
from tenants.models import Tenant

# --- OpenAPI shapes (documentation only: validation is pydantic's, in events/schemas.py) ---------

_ERROR_DETAIL_FIELDS: dict[str, Any] = {"field": serializers.CharField(), "message": serializers.CharField()}
ErrorSchema = inline_serializer(
    "Error",
    {
        "error": inline_serializer(
            "ErrorBody",
            {
                "code": serializers.CharField(),
                "message": serializers.CharField(),
                "details": inline_serializer("ErrorDetail", _ERROR_DETAIL_FIELDS, many=True),
            },
        ),
        "correlation_id": serializers.CharField(),
    },
)
_EVENT_IN_FIELDS: dict[str, Any] = {
    "event_id": serializers.CharField(required=False, max_length=64, help_text="Idempotency key (UUID)."),
    "event_type": serializers.ChoiceField(choices=EVENT_TYPES),
    "user_id": serializers.CharField(min_length=1, max_length=128),
    "session_id": serializers.CharField(required=False, max_length=128),
    "timestamp": serializers.DateTimeField(required=False, help_text="Client event time, ISO 8601."),
    "sent_at": serializers.DateTimeField(required=False, help_text="Client clock at send time."),
    "properties": serializers.DictField(
        required=False,
        help_text="page_view: url; search: query; add_to_cart/remove_from_cart: product_id, "
        "quantity ≥ 1, price ≥ 0; purchase: order_id, amount ≥ 0, currency (ISO 4217).",
    ),
}
EventInSchema = inline_serializer("EventIn", _EVENT_IN_FIELDS)
_REJECTED_FIELDS: dict[str, Any] = {
    "index": serializers.IntegerField(),
    "errors": inline_serializer("RejectedErrorDetail", _ERROR_DETAIL_FIELDS, many=True),
}
_DUPLICATE_FIELDS: dict[str, Any] = {"index": serializers.IntegerField(), "event_id": serializers.CharField()}
_ERRORS = {
    400: OpenApiResponse(ErrorSchema, "validation_error or malformed_json"),
    401: OpenApiResponse(ErrorSchema, "missing or wrong API key"),
    403: OpenApiResponse(ErrorSchema, "disabled tenant"),
    413: OpenApiResponse(ErrorSchema, "payload_too_large"),
    415: OpenApiResponse(ErrorSchema, "unsupported_media_type"),
    429: OpenApiResponse(ErrorSchema, "rate_limited (Retry-After)"),
    503: OpenApiResponse(ErrorSchema, "broker_unavailable (Retry-After)"),
}


def _context(request: Request, tenant: Tenant) -> RequestContext:
    return RequestContext(
        tenant=tenant.slug,
        received_at=utcnow(),
        ip=client_ip(request._request),
        user_agent=request.headers.get("User-Agent", ""),
        correlation_id=get_correlation_id(),
    )


def _body(request: Request) -> tuple[Any, int]:
    declared = request.META.get("CONTENT_LENGTH") or "0"
    if declared.isdigit() and int(declared) > settings.MAX_BODY_BYTES:
        raise body_too_large(int(declared))  # refuse before reading a byte of it
    try:
        body = request._request.body
    except RequestDataTooBig:
        raise body_too_large(int(declared) if declared.isdigit() else 0) from None
    return parse_json_body(body=body, content_type=request.content_type or ""), len(body)


class EventIngestView(APIView):
    """POST /api/events: one event."""

    permission_classes = [CanIngest]

    @extend_schema(
        operation_id="events_create",
        summary="Send one event",
        request=EventInSchema,
        responses={
            202: inline_serializer(
                "EventReceipt",
                {
                    "event_id": serializers.CharField(),
                    "correlation_id": serializers.CharField(),
                    "status": serializers.ChoiceField(choices=["accepted", "duplicate"]),
                },
            ),
            **_ERRORS,
        },
    )
    def post(self, request: Request) -> Response:
        payload, size = _body(request)
        if size > settings.MAX_EVENT_BYTES:
            raise PayloadTooLarge(
                f"an event may be at most {settings.MAX_EVENT_BYTES} bytes (32 KiB), got {size}",
                [ErrorDetail("body", "larger than 32 KiB")],
            )
        receipts = ingest_events(
            raw_events=[payload], context=_context(request, tenant_of(request)), body_bytes=size
        )
        if receipts.rejected:
            raise ValidationFailed("The event is invalid.", receipts.rejected[0][1])
        status, event_id = (
            ("accepted", receipts.accepted[0][1])
            if receipts.accepted
            else ("duplicate", receipts.duplicates[0][1])
        )
        return Response(
            {"event_id": event_id, "correlation_id": get_correlation_id(), "status": status}, status=202
        )


class EventBatchView(APIView):
    """POST /api/events/batch: up to 500 events, a receipt for each."""

    permission_classes = [CanIngest]

    @extend_schema(
        operation_id="events_batch_create",
        summary="Send a batch of events",
        request=inline_serializer(
            "EventBatchIn", {"events": inline_serializer("BatchEventIn", _EVENT_IN_FIELDS, many=True)}
        ),
        responses={
            202: inline_serializer(
                "BatchReceipt",
                {
                    "accepted": serializers.IntegerField(),
                    "event_ids": serializers.ListField(child=serializers.CharField()),
                    "duplicates": inline_serializer("Duplicate", _DUPLICATE_FIELDS, many=True),
                    "rejected": inline_serializer("Rejected", _REJECTED_FIELDS, many=True),
                    "correlation_id": serializers.CharField(),
                },
            ),
            **_ERRORS,
        },
    )
    def post(self, request: Request) -> Response:
        payload, size = _body(request)
        events = payload.get("events") if isinstance(payload, dict) else None
        if not isinstance(events, list):
            raise ValidationFailed(
                "The body must be an object with an `events` list.",
                [ErrorDetail("events", "required: a list of events")],
            )
        unknown = sorted(set(payload) - {"events"})
        if unknown:
            raise ValidationFailed(
                "The batch object has fields other than `events`.",
                [ErrorDetail(name, "unknown field") for name in unknown],
            )
        if len(events) > settings.MAX_BATCH_EVENTS:
            raise PayloadTooLarge(
                f"a batch may hold at most {settings.MAX_BATCH_EVENTS} events, got {len(events)}",
                [ErrorDetail("events", f"more than {settings.MAX_BATCH_EVENTS} events")],
            )
        receipts = ingest_events(
            raw_events=events, context=_context(request, tenant_of(request)), body_bytes=size
        )
        rejected = [{"index": i, "errors": [d.as_dict() for d in errors]} for i, errors in receipts.rejected]
        if not receipts.accepted and not receipts.duplicates:
            body = ValidationFailed("No event of the batch is valid.")
            return Response(
                {
                    "error": {"code": body.code, "message": body.message, "details": []},
                    "rejected": rejected,
                    "correlation_id": get_correlation_id(),
                },
                status=400,
            )
        return Response(
            {
                "accepted": len(receipts.accepted),
                "event_ids": receipts.event_ids,
                "duplicates": [{"index": i, "event_id": e} for i, e in receipts.duplicates],
                "rejected": rejected,
                "correlation_id": get_correlation_id(),
            },
            status=202,
        )


def _time_param(request: Request, name: str) -> datetime | None:
    raw = request.query_params.get(name)
    if raw is None:
        return None
    try:
        return parse_iso(raw)
    except ValueError:
        raise ValidationFailed(
            f"`{name}` is not an ISO 8601 time", [ErrorDetail(name, "expected e.g. 2026-11-26T10:00:00Z")]
        ) from None
    except OverflowError:
        raise ValidationFailed(
            f"`{name}` is out of range", [ErrorDetail(name, "outside years 1..9999 once in UTC")]
        ) from None


_LedgerRow: dict[str, Any] = {
    name: serializers.IntegerField()
    for name in (
        "received", "accepted", "duplicate", "rejected", "rate_limited", "stored", "dead_lettered", "pending",
    )
}  # fmt: skip


class LedgerView(APIView):
    """GET /api/ledger: per hour of arrival, where every event of the tenant went."""

    @extend_schema(
        operation_id="ledger_retrieve",
        summary="The tenant's loss ledger",
        parameters=[
            OpenApiParameter("since", OpenApiTypes.DATETIME, description="default: 25 h ago; >= retention"),
            OpenApiParameter("until", OpenApiTypes.DATETIME, description="default/latest: hour end"),
        ],
        responses={
            200: inline_serializer(
                "Ledger",
                {
                    "results": inline_serializer(
                        "LedgerHour", {"hour": serializers.DateTimeField(), **_LedgerRow}, many=True
                    ),
                    "totals": inline_serializer("LedgerTotals", _LedgerRow),
                },
            ),
            400: _ERRORS[400],
            401: _ERRORS[401],
            403: _ERRORS[403],
            429: _ERRORS[429],
            503: OpenApiResponse(ErrorSchema, "store_unavailable (Retry-After)"),
        },
    )
    def get(self, request: Request) -> Response:
        since, until = ledger_window(
            since=_time_param(request, "since"), until=_time_param(request, "until"), now=utcnow()
        )
        return Response(ledger_report(tenant=tenant_of(request).slug, since=since, until=until))
