"""Routes of the scoring app under /api/."""

from __future__ import annotations

from django.urls import URLPattern, path

from scoring.api import UserScoreView

urlpatterns: list[URLPattern] = [
    path("users/<str:user_id>/score", UserScoreView.as_view(), name="user-score"),
]
