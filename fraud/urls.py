"""Routes of the fraud app under /api/."""

from __future__ import annotations

from django.urls import URLPattern, path

from fraud.api import FraudAlertListView

urlpatterns: list[URLPattern] = [
    path("fraud/alerts", FraudAlertListView.as_view(), name="fraud-alerts"),
]
