"""The backpressure policy: depth tiers and the hysteresis band (pure, table-driven)."""

from __future__ import annotations

import pytest

from ops.autoscale import concurrency_target, default_pool_bounds


@pytest.mark.parametrize(
    ("depth", "current", "target"),
    [
        # short queue: run wide, whatever was in force
        (0, None, 32),
        (0, 4, 32),
        (999, 16, 32),
        # hysteresis band [1,000, 5,000): the target in force holds
        (1_000, 32, 32),
        (1_000, 16, 16),
        (3_000, 4, 4),
        (4_999, 16, 16),
        (4_999, 32, 32),
        # ... and with no target yet, the normal tier
        (2_500, None, 32),
        # deep queue: 5,000..10,000 inclusive
        (5_000, 32, 16),
        (7_500, 4, 16),
        (10_000, 32, 16),
        # very deep queue
        (10_001, 16, 4),
        (250_000, 32, 4),
        (10_001, None, 4),
    ],
)
def test_it_picks_the_tier_for_a_depth(depth: int, current: int | None, target: int) -> None:
    assert concurrency_target(depth=depth, current=current).target == target


def test_it_holds_through_the_band_on_the_way_down_and_up() -> None:
    """A backlog drains 12k → 0 and builds up again: no flapping inside the band."""
    target: int | None = None
    seen = []
    for depth in (12_000, 8_000, 4_000, 1_500, 999, 1_500, 4_000, 5_000, 4_000, 11_000, 3_000):
        target = concurrency_target(depth=depth, current=target).target
        seen.append(target)
    assert seen == [4, 16, 16, 16, 32, 32, 32, 16, 16, 4, 4]


def test_it_explains_each_decision() -> None:
    assert concurrency_target(depth=12_000, current=16).reason == "depth 12000 > 10000"
    assert concurrency_target(depth=2_000, current=16).reason == (
        "depth 2000 in hysteresis band 1000..5000, target holds"
    )


def test_it_refuses_a_negative_depth() -> None:
    with pytest.raises(ValueError, match="negative"):
        concurrency_target(depth=-1, current=None)


@pytest.mark.parametrize(
    ("cores", "bounds"),
    [(1, (1, 1)), (2, (2, 2)), (8, (8, 2)), (64, (32, 2))],
)
def test_it_sizes_the_default_pool_by_the_machine_within_the_widest_tier(
    cores: int, bounds: tuple[int, int]
) -> None:
    assert default_pool_bounds(cores=cores) == bounds
