"""The scoring step against the real database: idempotent, order-independent, no lost update."""

from __future__ import annotations

import math
import random
import subprocess
import sys
import time
import uuid
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest

from cloudscale_project.timeutil import isoformat_z
from events.models import StoredEvent
from scoring.models import ScoredEvent, UserScore
from scoring.selectors import user_score_get
from scoring.services import score_apply_batch, scored_events_purge, scores_apply
from scoring.weights import contribution_at_epoch, score_at
from tests.conftest import ROOT, child_env
from tests.scoring import concurrent_scorer

T0 = datetime(2026, 11, 26, 10, 0, tzinfo=UTC)


def event(
    event_type: str, *, user: str = "u1", at: datetime = T0, event_id: str | None = None
) -> dict[str, Any]:
    return {
        "event_id": event_id or str(uuid.uuid4()),
        "event_type": event_type,
        "user_id": user,
        "timestamp": isoformat_z(at),
        "properties": {},
        "tenant": "acme",
    }


def stored_score(user: str = "u1", tenant: str = "acme", now: datetime = T0) -> float:
    return user_score_get(tenant=tenant, user_id=user, now=now).score


@pytest.mark.django_db
@pytest.mark.core
class TestScoreApply:
    def test_it_sums_the_weights_of_a_user_s_events(self) -> None:
        types = ["page_view", "click", "search", "add_to_cart", "remove_from_cart", "checkout_started",
                 "purchase", "login", "login_failed", "signup"]  # fmt: skip
        score_apply_batch(tenant="acme", events=[event(t) for t in types])
        assert math.isclose(stored_score(), 1 + 1 + 2 + 5 - 2 + 8 + 20 + 1 + 0 + 3, rel_tol=1e-9)
        row = UserScore.objects.get(tenant="acme", user_id="u1")
        assert row.events_counted == 10
        assert row.counts() == dict.fromkeys(types, 1)
        assert row.last_event_at == T0

    def test_it_decays_with_a_seven_day_half_life_by_event_time(self) -> None:
        score_apply_batch(tenant="acme", events=[event("purchase", at=T0 - timedelta(days=7))])
        assert math.isclose(stored_score(), 10.0, rel_tol=1e-9)
        assert math.isclose(stored_score(now=T0 + timedelta(days=7)), 5.0, rel_tol=1e-9)

    def test_it_applies_a_redelivered_event_once(self) -> None:
        batch = [event("purchase"), event("search")]
        assert scores_apply(tenant="acme", events=batch) == 2
        assert scores_apply(tenant="acme", events=batch) == 0
        assert scores_apply(tenant="acme", events=[batch[0], batch[0], event("click")]) == 1
        assert math.isclose(stored_score(), 23.0, rel_tol=1e-9)
        assert UserScore.objects.get().events_counted == 3

    def test_it_gives_the_same_score_for_events_out_of_order(self) -> None:
        rng = random.Random(3)
        types = ["page_view", "click", "search", "add_to_cart", "remove_from_cart", "purchase", "signup"]
        stream = [event(rng.choice(types), at=T0 - timedelta(hours=rng.uniform(0, 400))) for _ in range(200)]
        for start in range(0, 200, 25):
            score_apply_batch(tenant="acme", events=stream[start : start + 25])
        in_order = UserScore.objects.get(user_id="u1")

        newest_first = sorted(stream, key=lambda e: e["timestamp"], reverse=True)
        for e in newest_first:
            e["user_id"] = "u2"
            e["event_id"] += "-2"
        for start in range(0, 200, 7):
            score_apply_batch(tenant="acme", events=newest_first[start : start + 7])
        out_of_order = UserScore.objects.get(user_id="u2")

        assert math.isclose(stored_score("u1"), stored_score("u2"), rel_tol=1e-9)
        assert out_of_order.counts() == in_order.counts()
        assert (
            out_of_order.last_event_at
            == in_order.last_event_at
            == max(datetime.fromisoformat(e["timestamp"]) for e in stream)
        )

    def test_it_keeps_tenants_and_users_apart(self) -> None:
        score_apply_batch(tenant="acme", events=[event("purchase", user="u1"), event("click", user="u2")])
        shared_id = str(uuid.uuid4())
        score_apply_batch(tenant="acme", events=[event("signup", user="u1", event_id=shared_id)])
        # The same event id in another tenant is another event.
        score_apply_batch(tenant="globex", events=[event("signup", user="u1", event_id=shared_id)])
        assert math.isclose(stored_score("u1"), 23.0, rel_tol=1e-9)
        assert math.isclose(stored_score("u2"), 1.0, rel_tol=1e-9)
        assert math.isclose(stored_score("u1", tenant="globex"), 3.0, rel_tol=1e-9)

    def test_it_forgets_markers_only_after_the_retention_period(self) -> None:
        score_apply_batch(tenant="acme", events=[event("click")])
        assert scored_events_purge(now=datetime.now(UTC) + timedelta(days=29)) == 0
        assert scored_events_purge(now=datetime.now(UTC) + timedelta(days=31)) == 1
        assert not ScoredEvent.objects.exists()


@pytest.mark.core
@pytest.mark.parametrize("how", ["markers", "stored"])
def test_it_loses_no_update_when_two_processes_score_the_same_user(
    transactional_db: None, tmp_path: Path, how: str
) -> None:
    """Two worker processes, overlapping event ranges, the same user, at the same moment: scoring
    with its markers, and scoring inside the ORM store's write (each event once, by whichever
    process stored it)."""
    ranges = [(0, 300), (150, 450)]
    go = tmp_path / "go"
    env = child_env(DJANGO_SETTINGS_MODULE="tests.settings")
    processes = []
    for index, (first, last) in enumerate(ranges):
        ready = tmp_path / f"ready-{index}"
        argv = [
            sys.executable,
            "-m",
            concurrent_scorer.__name__,
            str(ready),
            str(go),
            str(first),
            str(last),
            how,
        ]
        processes.append(subprocess.Popen(argv, cwd=ROOT, env=env, stderr=subprocess.PIPE))
    try:
        deadline = datetime.now(UTC) + timedelta(seconds=60)
        while not all((tmp_path / f"ready-{i}").exists() for i in range(len(ranges))):
            assert all(p.poll() is None for p in processes), [p.stderr.read() for p in processes if p.stderr]
            assert datetime.now(UTC) < deadline, "scorer processes did not start"
            time.sleep(0.05)
        go.touch()
        for p in processes:
            assert p.wait(timeout=120) == 0, p.stderr.read() if p.stderr else ""
    finally:
        for p in processes:
            if p.poll() is None:
                p.kill()

    expected_events = concurrent_scorer.shared_events(0, 450)
    expected = sum(
        contribution_at_epoch(event_type=e["event_type"], at=datetime.fromisoformat(e["timestamp"]))
        for e in expected_events
    )
    row = UserScore.objects.get(tenant="acme", user_id=concurrent_scorer.USER)
    assert row.events_counted == 450
    assert row.purchase_count == sum(1 for e in expected_events if e["event_type"] == "purchase")
    now = T0
    assert math.isclose(
        score_at(score_at_epoch=row.score_at_epoch, now=now),
        score_at(score_at_epoch=expected, now=now),
        rel_tol=1e-9,
    )
    if how == "markers":
        assert ScoredEvent.objects.filter(tenant="acme").count() == 450
    else:
        assert not ScoredEvent.objects.exists()
        assert StoredEvent.objects.filter(tenant="acme").count() == 450
