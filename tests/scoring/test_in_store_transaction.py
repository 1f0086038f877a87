"""Scoring inside the ORM store's transaction: the stored row is the record that an event was scored.

The pipeline runs the scoring step's `apply_stored` inside `OrmEventStore.write_many`'s transaction
with the events that write newly stored, so an event is scored exactly when it is first stored,
both commit together, and no marker row is written. A store that writes elsewhere (Cosmos DB) gets
the step called before it, with its markers (docs/architecture.md, "Steps").
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

import pytest

from cloudscale_project.timeutil import utcnow
from events.models import StoredEvent
from events.pipeline import BatchMessage, Pipeline, RetryBatch, batch_process
from events.stores.base import Event, NewEventsHook
from events.stores.orm import OrmEventStore
from scoring import services as scoring_services
from scoring.models import ScoredEvent, UserScore
from scoring.selectors import user_score_get
from scoring.services import score_apply_batch, scores_apply
from tests.events.pipeline_support import enriched_event

pytestmark = [pytest.mark.django_db, pytest.mark.core]


class OtherDatabaseStore(OrmEventStore):
    """Writes like the ORM store but, like Cosmos DB, offers no transaction shared with the steps."""

    runs_steps_in_transaction = False

    def write_many(self, events: Sequence[Event], *, then: NewEventsHook | None = None) -> set[str]:
        assert then is None, "a store that writes elsewhere is never handed steps to run"
        return super().write_many(events)


def scoring_pipeline(store: OrmEventStore | None = None) -> Pipeline:
    return Pipeline(store=store or OrmEventStore(), before_store=(score_apply_batch,))


def process(events: Sequence[Event], pipeline: Pipeline, *, attempt: int = 1) -> list[str]:
    message = BatchMessage(tenant="acme", events=[dict(e) for e in events], correlation_id="c")
    return batch_process(message=message, attempt=attempt, pipeline=pipeline).stored


NOW = utcnow()


def score(user: str) -> float:
    """The user's score as of one fixed moment, so that reads differ only by what was added."""
    return user_score_get(tenant="acme", user_id=user, now=NOW).score


def test_each_new_event_is_scored_once_with_its_store_write_and_no_marker_is_written() -> None:
    events = [
        enriched_event(event_type="purchase", user_id="alice"),
        enriched_event(event_type="click", user_id="alice"),
        enriched_event(event_type="signup", user_id="bob"),
    ]
    first = process(events, scoring_pipeline())
    alice, bob = score("alice"), score("bob")
    redelivered = process(events, scoring_pipeline())
    part_new = process([events[0], enriched_event(event_type="click", user_id="bob")], scoring_pipeline())

    assert sorted(first) == sorted(e["event_id"] for e in events)
    assert redelivered == [] and len(part_new) == 1
    assert alice > 0 and math.isclose(score("alice"), alice, rel_tol=1e-9)
    assert score("bob") > bob
    assert UserScore.objects.get(user_id="alice").events_counted == 2
    assert UserScore.objects.get(user_id="bob").events_counted == 2
    assert not ScoredEvent.objects.exists()


def test_a_scoring_failure_rolls_back_the_store_write_and_the_retry_scores_once(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    events = [enriched_event(event_type="purchase", user_id="alice") for _ in range(3)]
    add_scores = scoring_services._scores_add
    calls = {"n": 0}

    def fails_once(**kwargs: Any) -> None:
        calls["n"] += 1
        if calls["n"] == 1:
            raise ValueError("scoring broke")
        add_scores(**kwargs)

    monkeypatch.setattr(scoring_services, "_scores_add", fails_once)

    with pytest.raises(RetryBatch):
        process(events, scoring_pipeline())
    assert not StoredEvent.objects.exists() and not UserScore.objects.exists()

    stored = process(events, scoring_pipeline(), attempt=2)
    assert len(stored) == 3
    assert UserScore.objects.get(user_id="alice").events_counted == 3


def test_an_event_an_older_worker_scored_before_its_store_write_is_not_scored_again() -> None:
    # The marker path scored it, then the worker died before the store committed: the redelivery
    # stores it for the first time, and must find the marker rather than score it twice.
    scored_before = enriched_event(event_type="purchase", user_id="alice")
    assert scores_apply(tenant="acme", events=[scored_before]) == 1
    after_marker = score("alice")

    stored = process([scored_before, enriched_event(event_type="click", user_id="alice")], scoring_pipeline())

    assert len(stored) == 2
    assert UserScore.objects.get(user_id="alice").events_counted == 2
    assert score("alice") > after_marker
    assert ScoredEvent.objects.count() == 1  # the old marker; none new


def test_a_store_that_writes_elsewhere_gets_scoring_before_it_with_markers() -> None:
    events = [enriched_event(event_type="purchase", user_id="alice"), enriched_event(user_id="bob")]

    process(events, scoring_pipeline(OtherDatabaseStore()))
    process(events, scoring_pipeline(OtherDatabaseStore()))

    assert ScoredEvent.objects.count() == 2
    assert UserScore.objects.get(user_id="alice").events_counted == 1
    assert UserScore.objects.get(user_id="bob").events_counted == 1
    assert StoredEvent.objects.count() == 2
