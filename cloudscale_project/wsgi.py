"""WSGI entry point (gunicorn)."""

from __future__ import annotations

import os

from django.core.wsgi import get_wsgi_application

from cloudscale_project.observability import configure_tracing

os.environ.setdefault("DJANGO_SETTINGS_MODULE", "cloudscale_project.settings")

# Before the handler loads MIDDLEWARE: the Django instrumentation adds the request span there.
configure_tracing(service_name="cloudscale-api", instrument_django=True)
application = get_wsgi_application()
