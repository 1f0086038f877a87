"""Event-store port and its adapters; `get_event_store()` builds the one `CLOUDSCALE_EVENT_STORE` names.

The setting is `orm`, `cosmos` or the dotted path of any class with the `EventStore` interface (the
way Django picks an EMAIL_BACKEND). A class that needs configuration provides a `from_settings()`
class method; otherwise it is built with no arguments.
"""

from __future__ import annotations

from functools import cache
from typing import cast

from django.conf import settings
from django.utils.module_loading import import_string

from events.stores.base import EventPage, EventStore, StoreUnavailable

__all__ = ["EventPage", "EventStore", "StoreUnavailable", "build_event_store", "get_event_store"]


@cache
def get_event_store() -> EventStore:
    """The process's event store, built once."""
    return build_event_store(settings.EVENT_STORE)


def build_event_store(backend: str) -> EventStore:
    store_class = import_string(settings.EVENT_STORE_BACKENDS.get(backend, backend))
    from_settings = getattr(store_class, "from_settings", None)
    return cast(EventStore, from_settings() if from_settings is not None else store_class())
