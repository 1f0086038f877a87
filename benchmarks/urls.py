"""The platform's URL map plus the benchmark's latency floor (a trivial Django view)."""

from __future__ import annotations

from django.urls import path

from benchmarks.views import noop
from cloudscale_project.urls import handler404, handler500, urlpatterns

__all__ = ["handler404", "handler500", "urlpatterns"]

urlpatterns = [*urlpatterns, path("bench/noop", noop, name="bench-noop")]
