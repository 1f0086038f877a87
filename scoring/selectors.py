"""Reads of scores: a user's score as of now."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime

from cloudscale_project.errors import NotFound
from cloudscale_project.timeutil import utcnow
from events.schemas import is_user_id
from scoring.models import UserScore
from scoring.weights import score_at, segment_for


@dataclass(frozen=True)
class ScoreView:
    user_id: str
    score: float
    segment: str
    events_counted: int
    updated_at: datetime
    last_event_at: datetime
    counts: dict[str, int]


def user_score_get(*, tenant: str, user_id: str, now: datetime | None = None) -> ScoreView:
    """The user's score decayed to `now` (default: the wall clock); NotFound for an unknown user."""
    # A user id the API could never accept (a NUL fails the query itself on PostgreSQL) has no score.
    row = UserScore.objects.filter(tenant=tenant, user_id=user_id).first() if is_user_id(user_id) else None
    if row is None:
        raise NotFound(f"No score for user {user_id!r}.")
    score = score_at(score_at_epoch=row.score_at_epoch, now=now or utcnow())
    return ScoreView(
        user_id=row.user_id,
        score=score,
        segment=segment_for(score),
        events_counted=row.events_counted,
        updated_at=row.updated_at,
        last_event_at=row.last_event_at,
        counts=row.counts(),
    )
