"""The velocity rules (docs/api.md, "Fraud rules") as pure functions over event-time windows.

A rule counts, per subject (a user or an IP), the events inside a sliding window of
`window_seconds` of event time, `(end - window, end]`, and hits when the count is more than
`threshold`. Windows are examined at every event time that can close a window containing a new
event, so a batch that arrives out of order finds the same windows as one in order.

A hit is reported once per (rule, subject, bucket), where bucket = floor(window end / window):
adding events only ever raises counts, so every window that hits with part of the events also hits
with all of them, and the set of buckets with a hit depends only on the set of events, never on the
order they arrived in. That is what makes alerts replay- and order-independent.
"""

from __future__ import annotations

from bisect import bisect_right
from collections import Counter
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from enum import StrEnum
from typing import Any, NamedTuple

# An alert keeps at most this many triggering event ids (the count is kept in full).
MAX_ALERT_EVENT_IDS = 500


class Rule(StrEnum):
    PURCHASE_VELOCITY = "purchase_velocity"
    LOGIN_FAILED_VELOCITY = "login_failed_velocity"
    IP_DISTINCT_USERS = "ip_distinct_users"
    USER_EVENT_RATE = "user_event_rate"


@dataclass(frozen=True)
class RuleSpec:
    rule: Rule
    description: str
    default_threshold: int
    default_window_seconds: int
    event_type: str | None  # only events of this type count; None: every event
    subject: str  # "user" or "ip"
    distinct_users: bool  # count distinct user ids instead of events


RULES: dict[Rule, RuleSpec] = {
    spec.rule: spec
    for spec in (
        RuleSpec(Rule.PURCHASE_VELOCITY, "purchases by one user", 3, 600, "purchase", "user", False),
        RuleSpec(
            Rule.LOGIN_FAILED_VELOCITY, "failed logins of one user", 5, 300, "login_failed", "user", False
        ),
        RuleSpec(Rule.IP_DISTINCT_USERS, "distinct users from one IP", 10, 600, None, "ip", True),
        RuleSpec(Rule.USER_EVENT_RATE, "events from one user", 300, 60, None, "user", False),
    )
}


@dataclass(frozen=True)
class RuleConfig:
    """A rule as one tenant runs it: the defaults, unless the tenant changed them in admin."""

    rule: Rule
    threshold: int
    window_seconds: int
    enabled: bool = True

    @property
    def spec(self) -> RuleSpec:
        return RULES[self.rule]


def default_configs() -> dict[Rule, RuleConfig]:
    return {
        rule: RuleConfig(rule, spec.default_threshold, spec.default_window_seconds)
        for rule, spec in RULES.items()
    }


def rule_subject(spec: RuleSpec, event: Mapping[str, Any]) -> str | None:
    """The subject an event counts against for this rule, or None when it does not count."""
    if spec.event_type is not None and event.get("event_type") != spec.event_type:
        return None
    value = event.get("ip") if spec.subject == "ip" else event.get("user_id")
    return str(value) if value else None


class Entry(NamedTuple):
    """One event in a subject's window: its event time (epoch seconds) and identity.

    A named tuple, not a dataclass: the fraud step makes one per event of every batch, and a frozen
    dataclass's constructor was a noticeable share of the step's CPU."""

    at: float
    event_id: str
    user_id: str
    event_type: str


@dataclass(frozen=True)
class Hit:
    bucket: int
    window_end: float  # event time of the event that closes the window
    count: int
    event_ids: tuple[str, ...]
    user_id: str  # the user of the event that closes the window
    event_type: str  # the type of that event


def find_hits(*, entries: Sequence[Entry], new_times: Sequence[float], config: RuleConfig) -> list[Hit]:
    """Windows that hit and contain at least one new event; the first hit of each bucket.

    `entries` are all known events of one subject around the new ones (at least those within one
    window of a new time), sorted by time; `new_times` are the event times of the new events, sorted.
    A window that contains no new event was already examined when its own events arrived.
    """
    window = config.window_seconds
    hits: dict[int, Hit] = {}
    users: Counter[str] = Counter()
    left = 0
    for right, entry in enumerate(entries):
        users[entry.user_id] += 1
        if right + 1 < len(entries) and entries[right + 1].at == entry.at:
            continue  # events at the same instant belong to the same windows: add them all first
        end = entry.at
        while entries[left].at <= end - window:
            users[entries[left].user_id] -= 1
            if not users[entries[left].user_id]:
                del users[entries[left].user_id]
            left += 1
        newest_new = bisect_right(new_times, end) - 1
        if newest_new < 0 or new_times[newest_new] <= end - window:
            continue  # no new event in (end - window, end]
        count = len(users) if config.spec.distinct_users else right - left + 1
        bucket = int(end // window)
        if count > config.threshold and bucket not in hits:
            in_window = entries[left : right + 1]
            hits[bucket] = Hit(
                bucket=bucket,
                window_end=end,
                count=count,
                event_ids=tuple(e.event_id for e in in_window[:MAX_ALERT_EVENT_IDS]),
                user_id=entry.user_id,
                event_type=entry.event_type,
            )
    return list(hits.values())
