"""Event-store port and its adapters; `get_event_store()` picks one by `CLOUDSCALE_EVENT_STORE`."""

from __future__ import annotations

from functools import cache

from django.conf import settings

from events.stores.base import EventPage, EventStore, StoreUnavailable

__all__ = ["EventPage", "EventStore", "StoreUnavailable", "get_event_store"]


@cache
def get_event_store() -> EventStore:
    store = _configured_store()
    if settings.STORE_FAULT_FILE:  # test-only fault injection, off by default (events/stores/faults.py)
        from events.stores.faults import FaultSwitchStore

        return FaultSwitchStore(store, fault_file=settings.STORE_FAULT_FILE)
    return store


def _configured_store() -> EventStore:
    if settings.EVENT_STORE == "cosmos":
        from events.stores.cosmos import CosmosEventStore

        return CosmosEventStore.from_settings()
    from events.stores.orm import OrmEventStore

    return OrmEventStore()
