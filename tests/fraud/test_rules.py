"""Table tests of the pure velocity rules (no I/O)."""

from __future__ import annotations

import random

import pytest

from fraud.rules import RULES, Entry, Rule, RuleConfig, default_configs, find_hits, rule_subject


def entries(times: list[float], users: list[str] | None = None) -> list[Entry]:
    users = users or ["u1"] * len(times)
    return sorted(
        (
            Entry(at=t, event_id=f"e{i}", user_id=u, event_type="purchase")
            for i, (t, u) in enumerate(zip(times, users, strict=True))
        ),
        key=lambda e: (e.at, e.event_id),
    )


def hits_of(config: RuleConfig, times: list[float], users: list[str] | None = None) -> list[int]:
    all_entries = entries(times, users)
    return [h.bucket for h in find_hits(entries=all_entries, new_times=sorted(times), config=config)]


@pytest.mark.parametrize(
    ("rule", "threshold", "window"),
    [
        (Rule.PURCHASE_VELOCITY, 3, 600),
        (Rule.LOGIN_FAILED_VELOCITY, 5, 300),
        (Rule.IP_DISTINCT_USERS, 10, 600),
        (Rule.USER_EVENT_RATE, 300, 60),
    ],
)
def test_it_has_the_documented_defaults(rule: Rule, threshold: int, window: int) -> None:
    config = default_configs()[rule]
    assert (config.threshold, config.window_seconds, config.enabled) == (threshold, window, True)


@pytest.mark.parametrize("rule", list(Rule))
def test_it_hits_one_above_the_threshold_and_not_at_it(rule: Rule) -> None:
    config = default_configs()[rule]
    start = 1_000_000 * config.window_seconds  # the start of a bucket
    n = config.threshold
    times = [start + i * 0.01 for i in range(n)]
    users = [f"u{i}" for i in range(n + 1)] if config.spec.distinct_users else None
    assert hits_of(config, times, users[:n] if users else None) == []
    assert hits_of(config, [*times, start + n * 0.01], users) == [1_000_000]


def test_it_counts_distinct_users_not_events_for_the_ip_rule() -> None:
    config = default_configs()[Rule.IP_DISTINCT_USERS]
    many_events_few_users = [float(i) for i in range(50)]
    assert hits_of(config, many_events_few_users, [f"u{i % 10}" for i in range(50)]) == []
    assert hits_of(config, many_events_few_users, [f"u{i % 11}" for i in range(50)]) != []


def test_it_does_not_hit_when_the_events_are_a_full_window_apart() -> None:
    config = RuleConfig(Rule.PURCHASE_VELOCITY, threshold=3, window_seconds=600)
    assert hits_of(config, [0.0, 200.0, 400.0, 600.0]) == []  # (end - 600, end]: 0 is out at 600
    assert hits_of(config, [0.0, 200.0, 400.0, 599.999]) == [0]


def test_it_counts_events_at_the_same_instant_in_the_same_window() -> None:
    config = RuleConfig(Rule.PURCHASE_VELOCITY, threshold=3, window_seconds=600)
    assert hits_of(config, [100.0] * 4) == [0]


def test_it_finds_the_same_buckets_whatever_order_the_events_arrive_in() -> None:
    config = RuleConfig(Rule.PURCHASE_VELOCITY, threshold=3, window_seconds=600)
    rng = random.Random(7)
    times = [rng.uniform(0, 7200) for _ in range(60)]
    expected = set(hits_of(config, times))
    assert expected

    for _ in range(5):
        order = times[:]
        rng.shuffle(order)
        seen: list[float] = []
        found: set[int] = set()
        for start in range(0, len(order), 7):  # arrives in batches of 7, in a random order
            batch = order[start : start + 7]
            seen += batch
            found |= {
                h.bucket for h in find_hits(entries=entries(seen), new_times=sorted(batch), config=config)
            }
        assert found == expected


def test_it_only_examines_windows_that_contain_a_new_event() -> None:
    config = RuleConfig(Rule.PURCHASE_VELOCITY, threshold=3, window_seconds=600)
    old = entries([0.0, 1.0, 2.0, 3.0])
    assert find_hits(entries=old, new_times=[5000.0], config=config) == []


def test_subject_is_the_user_or_the_ip_and_only_for_the_rule_s_event_type() -> None:
    event = {"event_type": "purchase", "user_id": "u1", "ip": "10.0.0.1"}
    assert rule_subject(RULES[Rule.PURCHASE_VELOCITY], event) == "u1"
    assert rule_subject(RULES[Rule.LOGIN_FAILED_VELOCITY], event) is None
    assert rule_subject(RULES[Rule.IP_DISTINCT_USERS], event) == "10.0.0.1"
    assert rule_subject(RULES[Rule.IP_DISTINCT_USERS], {**event, "ip": ""}) is None
    assert rule_subject(RULES[Rule.USER_EVENT_RATE], event) == "u1"
