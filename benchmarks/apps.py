from __future__ import annotations

from django.apps import AppConfig


class BenchmarksConfig(AppConfig):
    """Holds `manage.py loadgen`; no models, no views or tasks in the production URL map or worker."""

    name = "benchmarks"
    verbose_name = "Benchmarks and load generation"
