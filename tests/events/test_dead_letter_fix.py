"""Fix and reprocess: a corrected copy of a dead letter's event, requeued, with its outcome on the row."""

from __future__ import annotations

import io
import json
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import pytest
from django.contrib.auth.models import User
from django.core.management import CommandError, call_command
from django.test import Client

from events.deadletters import (
    FixRejected,
    deadletter_fix,
    deadletter_fix_fields,
    deadletter_requeue,
    deadletter_resolve_outcomes,
)
from events.models import DeadLetter, StoredEvent
from events.pipeline import Pipeline, batch_process_message
from events.stores.orm import OrmEventStore
from tests.events.pipeline_support import (
    FlakyStore,
    batch_kwargs,
    enriched_event,
    run_like_the_task,
    take_one_message,
)

pytestmark = [pytest.mark.django_db, pytest.mark.core]


def dead_letter_of(event: Mapping[str, Any]) -> DeadLetter:
    """Dead-letter `event` the way a worker does: run its batch through the pipeline."""
    batch_process_message(
        args=(), kwargs=batch_kwargs("acme", [event]), attempt=1, pipeline=Pipeline(store=OrmEventStore())
    )
    return DeadLetter.objects.get(event_id=event["event_id"])


def process_the_requeued_message(pipeline: Pipeline | None = None) -> None:
    """What a worker does with the message a requeue published."""
    _args, kwargs, _embed = take_one_message().payload
    run_like_the_task(kwargs, pipeline or Pipeline(store=OrmEventStore()))


def dlq(*args: str) -> str:
    out = io.StringIO()
    call_command("dlq", *args, stdout=out, stderr=io.StringIO())
    return out.getvalue()


def test_it_stores_a_fixed_unknown_type_after_requeue_and_keeps_the_original() -> None:
    event = enriched_event(event_type="pageview")
    letter = dead_letter_of(event)
    assert letter.reason == "UnknownEventType"
    original = bytes(letter.payload)

    deadletter_fix_fields(letter_id=letter.pk, assignments={"event_type": "page_view"}, by="alice")
    deadletter_requeue(ids=[letter.pk], by="alice")
    process_the_requeued_message()

    stored = StoredEvent.objects.get(tenant="acme", event_id=event["event_id"])
    assert stored.event_type == "page_view"
    letter.refresh_from_db()
    assert bytes(letter.payload) == original, "the original payload is kept for audit"
    assert json.loads(bytes(letter.fixed_payload or b""))["event_type"] == "page_view"
    assert letter.requeue_outcome == "published"
    assert deadletter_resolve_outcomes(letters=[letter]) == 1
    letter.refresh_from_db()
    assert (letter.status, letter.requeue_outcome) == ("requeued", "stored")
    assert [(h["action"], h.get("by")) for h in letter.history] == [
        ("fixed", "alice"),
        ("requeued", "alice"),
        ("stored", None),
    ]
    assert letter.history[0]["changes"] == [{"field": "event_type", "old": "pageview", "new": "page_view"}]


def test_it_rejects_a_fix_that_the_catalog_refuses_with_errors_by_field() -> None:
    letter = dead_letter_of(enriched_event(event_type="pageview"))

    with pytest.raises(FixRejected) as rejected:
        deadletter_fix_fields(
            letter_id=letter.pk,
            assignments={"event_type": "purchase", "properties.amount": "12", "event_id": "other"},
            by="alice",
        )

    fields = {error.field for error in rejected.value.errors}
    assert {"event_id", "properties.amount", "properties.order_id", "properties.currency"} <= fields
    letter.refresh_from_db()
    assert letter.fixed_payload is None and letter.history == []


def test_a_requeued_unfixed_event_that_fails_again_says_so_on_its_row() -> None:
    letter = dead_letter_of(enriched_event(event_type=""))
    assert letter.reason == "MissingEventType"

    deadletter_requeue(ids=[letter.pk], by="bob")
    process_the_requeued_message()

    letter.refresh_from_db()
    assert (letter.status, letter.attempts, letter.requeue_outcome) == ("pending", 2, "failed")
    assert letter.requeue_error == "MissingEventType: event_type is missing"


def test_a_fixed_copy_that_fails_again_is_a_new_row_the_original_points_to() -> None:
    event = enriched_event(event_type="pageview")
    letter = dead_letter_of(event)
    deadletter_fix_fields(letter_id=letter.pk, assignments={"event_type": "page_view"}, by="alice")
    deadletter_requeue(ids=[letter.pk], by="alice")

    process_the_requeued_message(Pipeline(store=FlakyStore(failures=None)))  # the store stays down

    again = DeadLetter.objects.exclude(pk=letter.pk).get(event_id=event["event_id"])
    assert again.reason == "MaxRetriesExceeded"
    letter.refresh_from_db()
    assert (letter.status, letter.requeue_outcome) == ("requeued", "failed")
    assert letter.requeue_error.startswith(f"dead-lettered again as #{again.pk} (MaxRetriesExceeded):")
    assert letter.history[-1]["dead_letter"] == again.pk
    # The ledger counts the event once: the new row is dead, the requeued original is not.
    assert DeadLetter.objects.filter(event_id=event["event_id"], status="pending").count() == 1


def test_a_requeued_row_cannot_be_fixed_until_it_is_back() -> None:
    letter = dead_letter_of(enriched_event(event_type="pageview"))
    deadletter_requeue(ids=[letter.pk])
    with pytest.raises(FixRejected, match="requeued and not back yet"):
        deadletter_fix(letter_id=letter.pk, event={}, by="alice")


# --- manage.py dlq fix ----------------------------------------------------------------------------


def test_dlq_fix_sets_fields_and_the_next_requeue_publishes_the_copy() -> None:
    letter = dead_letter_of(enriched_event(event_type="pageview"))

    out = dlq("fix", str(letter.pk), "--set", "event_type=page_view", "properties.views:=3")

    assert 'event_type: "pageview" -> "page_view"' in out and "properties.views: null -> 3" in out
    assert f"manage.py dlq requeue {letter.pk}" in out
    dlq("requeue", str(letter.pk))
    _args, kwargs, _embed = take_one_message().payload
    (published,) = kwargs["events"]
    assert published["event_type"] == "page_view" and published["properties"]["views"] == 3
    letter.refresh_from_db()
    assert letter.history[0]["by"].startswith("shell")


def test_dlq_fix_from_a_file_and_its_errors(tmp_path: Path) -> None:
    event = enriched_event(event_type="pageview")
    letter = dead_letter_of(event)
    bad = tmp_path / "bad.json"
    bad.write_text(json.dumps({**event, "event_type": "page_view", "properties": {}}))
    err = io.StringIO()
    with pytest.raises(CommandError, match=f"Dead letter {letter.pk} not fixed: 1 error"):
        call_command("dlq", "fix", str(letter.pk), "--file", str(bad), stdout=io.StringIO(), stderr=err)
    assert "properties.url: Field required" in err.getvalue()

    good = tmp_path / "good.json"
    good.write_text(json.dumps({**event, "event_type": "page_view"}))
    assert f"Fixed dead letter {letter.pk}: 1 change(s)" in dlq("fix", str(letter.pk), "--file", str(good))


def test_dlq_list_says_whether_a_requeued_event_was_stored_or_failed_again() -> None:
    stored = dead_letter_of(enriched_event(event_type="pageview"))
    failing = dead_letter_of(enriched_event(event_type=""))
    dlq("fix", str(stored.pk), "--set", "event_type=page_view")
    dlq("requeue", str(stored.pk))
    process_the_requeued_message()
    dlq("requeue", str(failing.pk))
    process_the_requeued_message()

    lines = {line.split()[0]: line for line in dlq("list").splitlines()[1:]}

    assert "stored" in lines[str(stored.pk)] and "yes" in lines[str(stored.pk)]
    assert "failed again: MissingEventType" in lines[str(failing.pk)]


# --- admin ------------------------------------------------------------------------------------------


def test_admin_fix_shows_field_errors_then_saves_and_requeues(admin_client: Client) -> None:
    event = enriched_event(event_type="pageview")
    letter = dead_letter_of(event)
    url = f"/admin/events/deadletter/{letter.pk}/change/"
    form = admin_client.get(url)
    assert form.status_code == 200 and 'name="fixed_event"' in form.text

    refused = admin_client.post(url, {"fixed_event": json.dumps({**event, "event_type": "search"})})
    assert refused.status_code == 200
    assert "properties.query: Field required" in refused.text
    letter.refresh_from_db()
    assert letter.fixed_payload is None

    done = admin_client.post(
        url, {"fixed_event": json.dumps({**event, "event_type": "page_view"}), "_fix_and_requeue": "1"}
    )
    assert done.status_code == 302
    letter.refresh_from_db()
    assert letter.status == "requeued" and letter.fixed_by == User.objects.get().username
    process_the_requeued_message()
    listing = admin_client.get("/admin/events/deadletter/")
    assert '<span class="requeue-stored">stored</span>' in listing.text
    detail = admin_client.get(url)
    assert detail.status_code == 200 and "stored by the event store" in detail.text
    assert 'name="fixed_event"' not in detail.text, "a requeued row is read-only"
