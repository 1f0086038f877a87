"""Routes of the events app under /api/: ingestion, stored events and the loss ledger."""

from __future__ import annotations

from django.urls import URLPattern, path

from events.api import EventBatchView, EventIngestView, LedgerView
from events.query_api import EventDetailView, EventListView
from tenants.authentication import CanIngestOrRead


class EventsView(EventIngestView, EventListView):
    """/api/events: POST sends one event (events.api), GET lists stored ones (events.query_api)."""

    permission_classes = [CanIngestOrRead]


urlpatterns: list[URLPattern] = [
    path("events", EventsView.as_view(), name="events"),
    path("events/batch", EventBatchView.as_view(), name="events-batch"),
    path("ledger", LedgerView.as_view(), name="ledger"),
    # After events/batch, so "batch" is never read as an event id.
    path("events/<str:event_id>", EventDetailView.as_view(), name="event-detail"),
]
