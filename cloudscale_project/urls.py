"""URL map (the composition root): each app's API under /api/, probes and metrics at the root, admin."""

from __future__ import annotations

from collections.abc import Iterable

from django.contrib import admin
from django.urls import include, path
from django_ratelimit.decorators import ratelimit
from drf_spectacular.views import SpectacularAPIView, SpectacularSwaggerView
from rest_framework.negotiation import DefaultContentNegotiation
from rest_framework.renderers import BaseRenderer
from rest_framework.request import Request

from compat.api import IngestionWarningListView
from ops.dashboard_views import overview_urls
from ops.views import healthz, metrics, readyz


class SchemaFormatNegotiation(DefaultContentNegotiation):
    """`/api/schema/?format=json` (or `yaml`) picks the schema's rendering. The API's own views
    ignore `format` (settings: `URL_FORMAT_OVERRIDE` is off, since DRF answered 404 for a value
    it had no renderer for); here an unknown value is ignored too, leaving the Accept header."""

    def select_renderer(
        self, request: Request, renderers: Iterable[BaseRenderer], format_suffix: str | None = None
    ) -> tuple[BaseRenderer, str]:
        renderers = list(renderers)
        asked = request.query_params.get("format")
        if not format_suffix and asked in {renderer.format for renderer in renderers}:
            format_suffix = asked
        return super().select_renderer(request, renderers, format_suffix)


urlpatterns = [
    path("healthz", healthz, name="healthz"),
    path("readyz", readyz, name="readyz"),
    path("metrics", metrics, name="metrics"),
    path("admin/overview/", include(overview_urls())),  # staff-only charts; before the admin's catch-all
    path("admin/", admin.site.urls),
    path("api/ingestion-warnings", IngestionWarningListView.as_view(), name="ingestion-warnings"),
    path("api/", include("events.urls")),
    path("api/", include("fraud.urls")),
    path("api/", include("scoring.urls")),
    path(
        "api/schema/",
        SpectacularAPIView.as_view(content_negotiation_class=SchemaFormatNegotiation),
        name="schema",
    ),
    path("api/docs/", SpectacularSwaggerView.as_view(url_name="schema"), name="docs"),
    # Segment / RudderStack (/v1/...) and PostHog (/batch/, /capture/, /e/, /i/v0/e/) at the root.
    path("", include("compat.urls")),
]

# Brute-force protection of the admin login (django-ratelimit: a fixed window fits this case).
admin.site.login = ratelimit(key="ip", rate="10/m", method="POST", block=True)(admin.site.login)  # type: ignore[method-assign]

handler404 = "cloudscale_project.errors.json_404"
handler500 = "cloudscale_project.errors.json_500"
