"""Event-store port and its adapters; `get_event_store()` picks one by `CLOUDSCALE_EVENT_STORE`."""

from __future__ import annotations

from functools import cache

from django.conf import settings

from events.stores.base import EventPage, EventStore, StoreUnavailable

__all__ = ["EventPage", "EventStore", "StoreUnavailable", "get_event_store"]


@cache
def get_event_store() -> EventStore:
    if settings.EVENT_STORE == "cosmos":
        from events.stores.cosmos import CosmosEventStore

        return CosmosEventStore.from_settings()
    from events.stores.orm import OrmEventStore

    return OrmEventStore()
