"""Backpressure policy: the worker concurrency the ingestion queue's depth asks for.

The tiers are in docs/api.md, "Backpressure".

Pure: no I/O, so the tiers and their hysteresis are a table test. A deep queue means the workers'
downstream (event store, database) is the bottleneck, so the policy *lowers* concurrency there to
stop hammering it, and runs wide when the queue is short.
"""

from __future__ import annotations

from dataclasses import dataclass

# Tier bounds, in messages waiting. Between SHORT_QUEUE_BELOW and DEEP_QUEUE_FROM the current
# target holds (hysteresis): a depth hovering around one bound must not flap the pool size.
SHORT_QUEUE_BELOW = 1_000
DEEP_QUEUE_FROM = 5_000
VERY_DEEP_QUEUE_ABOVE = 10_000

SHORT_QUEUE_CONCURRENCY = 32
DEEP_QUEUE_CONCURRENCY = 16
VERY_DEEP_QUEUE_CONCURRENCY = 4
# With no target yet (first sample ever) inside the hysteresis band, start from the normal tier.
INITIAL_CONCURRENCY = SHORT_QUEUE_CONCURRENCY


@dataclass(frozen=True)
class ConcurrencyDecision:
    target: int
    reason: str


def concurrency_target(*, depth: int, current: int | None) -> ConcurrencyDecision:
    """The target concurrency for a sampled queue depth, given the target in force (None if none yet)."""
    if depth < 0:
        raise ValueError(f"queue depth cannot be negative: {depth}")
    if depth < SHORT_QUEUE_BELOW:
        return ConcurrencyDecision(SHORT_QUEUE_CONCURRENCY, f"depth {depth} < {SHORT_QUEUE_BELOW}")
    if depth > VERY_DEEP_QUEUE_ABOVE:
        return ConcurrencyDecision(VERY_DEEP_QUEUE_CONCURRENCY, f"depth {depth} > {VERY_DEEP_QUEUE_ABOVE}")
    if depth >= DEEP_QUEUE_FROM:
        return ConcurrencyDecision(
            DEEP_QUEUE_CONCURRENCY, f"depth {depth} in {DEEP_QUEUE_FROM}..{VERY_DEEP_QUEUE_ABOVE}"
        )
    band = f"depth {depth} in hysteresis band {SHORT_QUEUE_BELOW}..{DEEP_QUEUE_FROM}"
    if current is None:
        return ConcurrencyDecision(INITIAL_CONCURRENCY, f"{band}, no target yet")
    return ConcurrencyDecision(current, f"{band}, target holds")


TIER_NAMES: dict[int, str] = {
    SHORT_QUEUE_CONCURRENCY: f"short queue (depth < {SHORT_QUEUE_BELOW:,})",
    DEEP_QUEUE_CONCURRENCY: f"deep queue (depth {DEEP_QUEUE_FROM:,}..{VERY_DEEP_QUEUE_ABOVE:,})",
    VERY_DEEP_QUEUE_CONCURRENCY: f"very deep queue (depth > {VERY_DEEP_QUEUE_ABOVE:,})",
}


def concurrency_tier(target: int) -> str:
    """The policy tier a target belongs to, in words (for operators)."""
    return TIER_NAMES.get(target, f"custom ({target})")


# A worker started without `--autoscale` runs one process per core at most. The tiers above stay
# ceilings (the pool never exceeds the target in force), but on a small machine 32 processes only
# contend: on 2 cores with SQLite's single writer lock, `--autoscale 32,2` was slower than 2,2
# (docs/benchmarks.md), because the pipeline is CPU-bound per event, not waiting.
POOL_FLOOR = 2


def default_pool_bounds(*, cores: int) -> tuple[int, int]:
    """(max, min) worker processes for this machine: one per core, never above the widest tier."""
    ceiling = max(1, min(cores, SHORT_QUEUE_CONCURRENCY))
    return ceiling, min(POOL_FLOOR, ceiling)
