"""Engagement-score policy (docs/api.md, "Scoring"): weights, 7-day half-life by event time, segments.

The score is kept as its value at a fixed reference time, SCORE_EPOCH: an event of weight w at time
t adds w * 2^((t - epoch) / half-life). That sum is additive and independent of the order events
arrive in, so workers can add contributions with a plain `score = score + delta` and replays or
out-of-order batches give the same result; reading converts it to "now" with one multiplication.
Float range: 2^((t - epoch)/half-life) stays finite until about 19 years after the epoch (~2045);
before then, rebase with one UPDATE multiplying every score by 2^(-Δ/half-life) and move the epoch.
"""

from __future__ import annotations

from datetime import UTC, datetime

WEIGHTS: dict[str, int] = {
    "page_view": 1,
    "click": 1,
    "search": 2,
    "add_to_cart": 5,
    "remove_from_cart": -2,
    "checkout_started": 8,
    "purchase": 20,
    "login": 1,
    "login_failed": 0,
    "signup": 3,
}
HALF_LIFE_SECONDS = 7 * 24 * 3600
SCORE_EPOCH = datetime(2026, 1, 1, tzinfo=UTC)
_EPOCH_SECONDS = SCORE_EPOCH.timestamp()

HIGH_INTENT_AT = 50.0
ENGAGED_AT = 10.0


def contribution_at_epoch(*, event_type: str, at: datetime) -> float:
    """What one event adds to a user's score, expressed at SCORE_EPOCH."""
    weight = WEIGHTS.get(event_type, 0)
    if not weight:
        return 0.0
    return weight * 2.0 ** ((at.timestamp() - _EPOCH_SECONDS) / HALF_LIFE_SECONDS)


def score_at(*, score_at_epoch: float, now: datetime) -> float:
    """The decayed score as of `now`."""
    return score_at_epoch * 2.0 ** ((_EPOCH_SECONDS - now.timestamp()) / HALF_LIFE_SECONDS)


def segment_for(score: float) -> str:
    if score >= HIGH_INTENT_AT:
        return "high_intent"
    if score >= ENGAGED_AT:
        return "engaged"
    return "casual"
