"""Read endpoints over the event store: GET /api/events and GET /api/events/{event_id}.

Every read is scoped to the authenticated tenant (`request.auth`); there is no parameter that
names a tenant, so one tenant can never page into another's events.
"""

from __future__ import annotations

from typing import Any

from drf_spectacular.utils import OpenApiResponse, extend_schema, inline_serializer
from rest_framework import serializers
from rest_framework.request import Request
from rest_framework.response import Response
from rest_framework.views import APIView

from cloudscale_project.errors import ErrorDetail, NotFound, ValidationFailed
from cloudscale_project.timeutil import parse_iso
from events.api import ErrorSchema
from events.schemas import EVENT_TYPES, is_event_id
from events.shape import FIELDS, EventField, Kind, max_length, public_view
from events.stores import get_event_store
from events.stores.base import InvalidCursor, decode_cursor
from tenants.authentication import tenant_of

MAX_PAGE = 1000
DEFAULT_PAGE = 100


def _documented_field(field: EventField) -> serializers.Field[Any, Any, Any, Any]:
    nullable = not field.required
    if field.name == "event_type":
        return serializers.CharField(help_text=f"{field.help} Catalog: {', '.join(EVENT_TYPES)}.")
    if field.kind is Kind.TIME:
        return serializers.DateTimeField(help_text=field.help)
    if field.kind is Kind.FLAG:
        return serializers.BooleanField(help_text=field.help)
    if field.kind is Kind.JSON:
        return serializers.DictField(allow_null=nullable, help_text=field.help)
    return serializers.CharField(allow_null=nullable, help_text=field.help)


# Documentation of a stored event, derived from its one definition (events/shape.py); responses
# render `public_view` dicts.
StoredEventSerializer = type(
    "StoredEventSerializer",
    (serializers.Serializer,),
    {field.name: _documented_field(field) for field in FIELDS},
)


_READ_ERRORS = {
    401: OpenApiResponse(ErrorSchema, "missing or wrong API key"),
    403: OpenApiResponse(ErrorSchema, "disabled tenant"),
    429: OpenApiResponse(ErrorSchema, "rate_limited (Retry-After)"),
    503: OpenApiResponse(ErrorSchema, "store_unavailable or broker_unavailable (Retry-After)"),
}


class EventFilterSerializer(serializers.Serializer[Any]):
    # Custom events are filtered by their own name, so any name is a valid filter.
    event_type = serializers.CharField(required=False, max_length=max_length("event_type"))
    user_id = serializers.CharField(required=False, max_length=max_length("user_id"), trim_whitespace=False)
    since = serializers.DateTimeField(required=False, help_text="Event time, inclusive (ISO 8601).")
    until = serializers.DateTimeField(required=False, help_text="Event time, exclusive (ISO 8601).")
    limit = serializers.IntegerField(required=False, min_value=1, max_value=MAX_PAGE, default=DEFAULT_PAGE)
    cursor = serializers.CharField(required=False, max_length=512, help_text="`next` of the previous page.")

    def validate_cursor(self, value: str) -> str:
        # Every part is checked as the store will use it: a time out of range or an id that can
        # never be stored (a NUL fails the query on PostgreSQL) is not a cursor this API returned.
        try:
            timestamp, event_id = decode_cursor(value)
            parse_iso(timestamp)
        except (InvalidCursor, ValueError, OverflowError):
            raise serializers.ValidationError("not a cursor this API returned") from None
        if not is_event_id(event_id):
            raise serializers.ValidationError("not a cursor this API returned")
        return value


class EventListView(APIView):
    """GET /api/events: the tenant's stored events, newest first, cursor-paginated."""

    @extend_schema(
        operation_id="events_list",
        summary="List stored events",
        parameters=[EventFilterSerializer],
        responses={
            200: inline_serializer(
                "EventPage",
                {
                    "results": StoredEventSerializer(many=True),
                    "next": serializers.CharField(allow_null=True, help_text="Cursor of the next page."),
                },
            ),
            400: OpenApiResponse(ErrorSchema, "validation_error (details name the parameter)"),
            **_READ_ERRORS,
        },
    )
    def get(self, request: Request) -> Response:
        filters = EventFilterSerializer(
            data=request.query_params.dict()
        )  # dict: "?user_id=" is blank, not absent
        if not filters.is_valid():
            raise ValidationFailed(
                "Invalid query parameters.",
                [
                    ErrorDetail(field, str(message))
                    for field, messages in filters.errors.items()
                    for message in (messages if isinstance(messages, list) else [messages])
                ],
            )
        params = filters.validated_data
        page = get_event_store().query(
            tenant=tenant_of(request).slug,
            event_type=params.get("event_type"),
            user_id=params.get("user_id"),
            since=params.get("since"),
            until=params.get("until"),
            limit=params["limit"],
            cursor=params.get("cursor"),
        )
        return Response({"results": [public_view(e) for e in page.results], "next": page.next_cursor})


class EventDetailView(APIView):
    """GET /api/events/{event_id}: one stored event of the tenant."""

    @extend_schema(
        operation_id="events_retrieve",
        summary="Get one stored event",
        responses={
            200: StoredEventSerializer,
            404: OpenApiResponse(ErrorSchema, "not_found: not stored (yet), or another tenant's"),
            **_READ_ERRORS,
        },
    )
    def get(self, request: Request, event_id: str) -> Response:
        tenant = tenant_of(request).slug
        event = get_event_store().get(tenant=tenant, event_id=event_id) if is_event_id(event_id) else None
        if event is None:
            raise NotFound(f"Event {event_id!r} is not stored (yet).")
        return Response(public_view(event))
