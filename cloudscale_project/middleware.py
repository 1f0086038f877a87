"""Request middleware shared by every endpoint."""

from __future__ import annotations

from collections.abc import Callable

from django.conf import settings
from django.http import HttpRequest, HttpResponse

from cloudscale_project.correlation import (
    HEADER,
    new_correlation_id,
    parse_correlation_id,
    set_correlation_id,
)


class CorrelationIdMiddleware:
    """Take the client's `X-Correlation-ID` if it is a valid UUID, else mint one; echo it back."""

    def __init__(self, get_response: Callable[[HttpRequest], HttpResponse]) -> None:
        self.get_response = get_response

    def __call__(self, request: HttpRequest) -> HttpResponse:
        correlation_id = parse_correlation_id(request.headers.get(HEADER)) or new_correlation_id()
        request.correlation_id = correlation_id  # type: ignore[attr-defined]
        set_correlation_id(correlation_id)
        response = self.get_response(request)
        response[HEADER] = correlation_id
        return response


INSTANCE_HEADER = "X-CloudScale-Instance"


class InstanceHeaderMiddleware:
    """Name the API instance that answered (settings.INSTANCE_NAME): behind the load balancer an
    operator sees which replica served a request, and the nginx test sees requests spread."""

    def __init__(self, get_response: Callable[[HttpRequest], HttpResponse]) -> None:
        self.get_response = get_response
        self.instance = settings.INSTANCE_NAME

    def __call__(self, request: HttpRequest) -> HttpResponse:
        response = self.get_response(request)
        response[INSTANCE_HEADER] = self.instance
        return response
