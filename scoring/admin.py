"""Admin: user scores, searchable by user."""

from __future__ import annotations

from django.contrib import admin

from cloudscale_project.admin import ReadOnlyAdmin
from cloudscale_project.timeutil import utcnow
from scoring.models import UserScore
from scoring.weights import score_at, segment_for


@admin.register(UserScore)
class UserScoreAdmin(ReadOnlyAdmin):
    list_display = ("user_id", "tenant", "score", "segment", "events_counted", "last_event_at", "updated_at")
    list_filter = ("tenant",)
    search_fields = ("user_id",)
    readonly_fields = [f.name for f in UserScore._meta.fields]

    @admin.display(description="score (now)")
    def score(self, obj: UserScore) -> str:
        return f"{score_at(score_at_epoch=obj.score_at_epoch, now=utcnow()):.2f}"

    @admin.display(description="segment")
    def segment(self, obj: UserScore) -> str:
        return segment_for(score_at(score_at_epoch=obj.score_at_epoch, now=utcnow()))
