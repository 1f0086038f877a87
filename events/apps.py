from __future__ import annotations

from django.apps import AppConfig


class EventsConfig(AppConfig):
    name = "events"
    verbose_name = "Events and tenants"

    def ready(self) -> None:
        from events import openapi  # noqa: F401 - registers the OpenAPI authentication extension
