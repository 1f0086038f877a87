"""Routes of the SDK-compatible endpoints, at the root so that an SDK only needs its host changed."""

from __future__ import annotations

from django.urls import URLPattern, re_path

from compat.api import SEGMENT_CALL_PATTERN, PostHogIngestView, SegmentIngestView

urlpatterns: list[URLPattern] = [
    re_path(r"^v1/batch/?$", SegmentIngestView.as_view(), name="segment-batch"),
    re_path(rf"^v1/(?P<call>{SEGMENT_CALL_PATTERN})/?$", SegmentIngestView.as_view(), name="segment-call"),
    re_path(r"^(?:batch|capture|e|i/v0/e)/?$", PostHogIngestView.as_view(), name="posthog-capture"),
]
