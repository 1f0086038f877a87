"""Routes of the /api/ namespace."""

from __future__ import annotations

from django.urls import URLPattern, path

from events.api import EventBatchView, EventIngestView, LedgerView
from events.query_api import EventDetailView, EventListView
from fraud.api import FraudAlertListView
from scoring.api import UserScoreView


class EventsView(EventIngestView, EventListView):
    """/api/events: POST sends one event (events.api), GET lists stored ones (events.query_api)."""


urlpatterns: list[URLPattern] = [
    path("events", EventsView.as_view(), name="events"),
    path("events/batch", EventBatchView.as_view(), name="events-batch"),
    path("ledger", LedgerView.as_view(), name="ledger"),
    # After events/batch, so "batch" is never read as an event id.
    path("events/<str:event_id>", EventDetailView.as_view(), name="event-detail"),
    path("users/<str:user_id>/score", UserScoreView.as_view(), name="user-score"),
    path("fraud/alerts", FraudAlertListView.as_view(), name="fraud-alerts"),
]
