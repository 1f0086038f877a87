"""Table tests of the scoring policy (no I/O)."""

from __future__ import annotations

import math
from datetime import UTC, datetime, timedelta

import pytest

from scoring.weights import WEIGHTS, contribution_at_epoch, score_at, segment_for

NOW = datetime(2026, 11, 26, 10, 0, tzinfo=UTC)


@pytest.mark.parametrize(
    ("event_type", "weight"),
    [
        ("page_view", 1), ("click", 1), ("search", 2), ("add_to_cart", 5), ("remove_from_cart", -2),
        ("checkout_started", 8), ("purchase", 20), ("login", 1), ("signup", 3), ("login_failed", 0),
    ],
)  # fmt: skip
def test_an_event_now_is_worth_its_weight(event_type: str, weight: int) -> None:
    assert WEIGHTS[event_type] == weight
    value = score_at(score_at_epoch=contribution_at_epoch(event_type=event_type, at=NOW), now=NOW)
    assert math.isclose(value, weight, rel_tol=1e-12)


@pytest.mark.parametrize(("age_days", "factor"), [(7, 0.5), (14, 0.25), (3.5, 2**-0.5), (0, 1.0)])
def test_it_halves_every_seven_days_of_event_time(age_days: float, factor: float) -> None:
    at = NOW - timedelta(days=age_days)
    value = score_at(score_at_epoch=contribution_at_epoch(event_type="purchase", at=at), now=NOW)
    assert math.isclose(value, 20 * factor, rel_tol=1e-12)


@pytest.mark.parametrize(
    ("score", "segment"),
    [(50.0, "high_intent"), (49.99, "engaged"), (10.0, "engaged"), (9.99, "casual"), (-4.0, "casual")],
)
def test_it_segments_by_score(score: float, segment: str) -> None:
    assert segment_for(score) == segment


def test_the_sum_does_not_depend_on_order() -> None:
    parts = [contribution_at_epoch(event_type="click", at=NOW - timedelta(hours=h)) for h in range(100)]
    assert math.isclose(sum(parts), sum(reversed(parts)), rel_tol=1e-12)
