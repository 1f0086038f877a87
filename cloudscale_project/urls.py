"""URL map (the composition root): each app's API under /api/, probes and metrics at the root, admin."""

from __future__ import annotations

from django.contrib import admin
from django.urls import include, path
from django_ratelimit.decorators import ratelimit
from drf_spectacular.views import SpectacularAPIView, SpectacularSwaggerView

from compat.api import IngestionWarningListView
from ops.dashboard_views import overview_urls
from ops.views import healthz, metrics, readyz

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
    path("api/schema/", SpectacularAPIView.as_view(), name="schema"),
    path("api/docs/", SpectacularSwaggerView.as_view(url_name="schema"), name="docs"),
    # Segment / RudderStack (/v1/...) and PostHog (/batch/, /capture/, /e/, /i/v0/e/) at the root.
    path("", include("compat.urls")),
]

# Brute-force protection of the admin login (django-ratelimit: a fixed window fits this case).
admin.site.login = ratelimit(key="ip", rate="10/m", method="POST", block=True)(admin.site.login)  # type: ignore[method-assign]

handler404 = "cloudscale_project.errors.json_404"
handler500 = "cloudscale_project.errors.json_500"
