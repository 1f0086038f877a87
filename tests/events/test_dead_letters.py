"""Dead letters: idempotent recording, requeue/discard, the ledger selector, `manage.py dlq`, admin."""

from __future__ import annotations

import io
import json
from datetime import UTC, datetime, timedelta

import pytest
from django.core.management import CommandError, call_command
from django.test import Client

from events.deadletters import (
    DeadLetterInput,
    dead_lettered_by_hour,
    deadletter_discard,
    deadletter_record_many,
    deadletter_requeue,
    event_payload,
)
from events.models import DeadLetter
from tests.events.pipeline_support import enriched_event, take_one_message

pytestmark = [pytest.mark.django_db, pytest.mark.core]

HOUR = datetime(2026, 11, 26, 10, tzinfo=UTC)


def letter(
    reason: str = "UnknownEventType", tenant: str = "acme", **event_overrides: object
) -> DeadLetterInput:
    event = enriched_event(tenant=tenant, event_type="teleport", **event_overrides)
    return DeadLetterInput(
        reason=reason,
        tenant=tenant,
        payload=event_payload(event),
        error="unknown event_type 'teleport'",
        event_id=event["event_id"],
        received_at=datetime.fromisoformat(event["received_at"]),
        correlation_id=event["correlation_id"],
    )


def record(*letters: DeadLetterInput) -> list[DeadLetter]:
    deadletter_record_many(letters=letters)
    return list(DeadLetter.objects.order_by("id"))


def dlq(*args: str) -> str:
    out = io.StringIO()
    call_command("dlq", *args, stdout=out, stderr=io.StringIO())
    return out.getvalue()


# --- services ---------------------------------------------------------------------------------------


def test_it_records_a_payload_seen_again_on_the_same_row() -> None:
    poison = letter()
    assert deadletter_record_many(letters=[poison]) == 1
    assert deadletter_record_many(letters=[poison]) == 0
    row = DeadLetter.objects.get()
    assert row.attempts == 2 and row.status == "pending"
    assert bytes(row.payload) == poison.payload


def test_it_reopens_a_requeued_row_that_fails_again_but_leaves_a_discarded_one_discarded() -> None:
    requeued, discarded = record(letter(), letter())
    DeadLetter.objects.filter(pk=requeued.pk).update(status="requeued")
    DeadLetter.objects.filter(pk=discarded.pk).update(status="discarded")

    deadletter_record_many(
        letters=[
            DeadLetterInput(reason=r.reason, tenant=r.tenant, payload=bytes(r.payload))
            for r in (requeued, discarded)
        ]
    )

    requeued.refresh_from_db()
    discarded.refresh_from_db()
    assert (requeued.status, requeued.attempts) == ("pending", 2)
    assert (discarded.status, discarded.attempts) == ("discarded", 2)


def test_requeue_publishes_the_event_again_and_marks_the_row() -> None:
    (row,) = record(letter())
    result = deadletter_requeue(ids=[row.pk, 999_999])

    assert result.requeued == [row.pk] and result.skipped == [999_999]
    row.refresh_from_db()
    assert row.status == "requeued" and row.status_changed_at is not None
    message = take_one_message()
    _args, kwargs, _embed = message.payload
    assert message.headers["task"] == "events.process_batch"
    assert kwargs == {
        "tenant": "acme",
        "events": [json.loads(bytes(row.payload))],
        "correlation_id": row.correlation_id,
    }
    assert deadletter_requeue(ids=[row.pk]).skipped == [row.pk], "a requeued row is not published twice"


def test_requeue_of_a_raw_message_publishes_its_bytes_and_headers_unchanged() -> None:
    raw = DeadLetterInput(
        reason="DeserializationFailed",
        kind="raw",
        payload=b"\xff\xfenot json",
        content_type="application/json",
        content_encoding="binary",
        headers={"x-origin": "legacy-producer"},
        error="message body could not be decoded",
    )
    (row,) = record(raw)
    deadletter_requeue(ids=[row.pk])
    message = take_one_message()
    assert message.body == b"\xff\xfenot json"
    assert message.headers["x-origin"] == "legacy-producer"


def test_discard_marks_only_pending_rows() -> None:
    pending, requeued = record(letter(), letter())
    DeadLetter.objects.filter(pk=requeued.pk).update(status="requeued")
    assert deadletter_discard(ids=[pending.pk, requeued.pk]) == 1
    assert dict(DeadLetter.objects.values_list("pk", "status")) == {
        pending.pk: "discarded",
        requeued.pk: "requeued",
    }


def test_dead_lettered_by_hour_counts_the_tenants_dead_events_by_hour_of_arrival() -> None:
    def at(minutes: int) -> str:
        return (HOUR + timedelta(minutes=minutes)).isoformat().replace("+00:00", "Z")

    rows = record(
        letter(received_at=at(5)),
        letter(received_at=at(50)),
        letter(received_at=at(70)),
        letter(received_at=at(80)),  # requeued: not dead any more
        letter(received_at=at(90)),  # discarded: still lost
        letter(tenant="globex", received_at=at(5)),
        DeadLetterInput(reason="DeserializationFailed", tenant="acme", payload=b"[1]", received_at=HOUR),
    )
    DeadLetter.objects.filter(pk=rows[3].pk).update(status="requeued")
    DeadLetter.objects.filter(pk=rows[4].pk).update(status="discarded")

    counts = dead_lettered_by_hour(tenant="acme", since=HOUR, until=HOUR + timedelta(hours=3))

    assert counts == {HOUR: 2, HOUR + timedelta(hours=1): 2}


# --- manage.py dlq --------------------------------------------------------------------------------------


def test_it_lists_dead_letters_as_one_json_array_filtered_by_reason() -> None:
    first, second = record(letter(), letter(reason="MissingEventType", tenant="globex"))
    rows = json.loads(dlq("list", "--json"))
    assert [set(r) for r in rows] == [
        {"id", "tenant", "reason", "error", "attempts", "status", "created_at"}
    ] * 2
    assert {r["id"] for r in rows} == {first.pk, second.pk}
    only = json.loads(dlq("list", "--json", "--reason", "MissingEventType"))
    assert [(r["id"], r["tenant"], r["reason"], r["status"]) for r in only] == [
        (second.pk, "globex", "MissingEventType", "pending")
    ]
    assert only[0]["created_at"].endswith("Z")
    # --reason is free text: rows imported from Service Bus carry the broker's own reasons.
    *_, broker = record(letter(reason="MaxDeliveryCountExceeded"))
    assert [r["id"] for r in json.loads(dlq("list", "--json", "--reason", "MaxDeliveryCountExceeded"))] == [
        broker.pk
    ]


def test_it_lists_dead_letters_as_a_table() -> None:
    (row,) = record(letter())
    table = dlq("list")
    assert "REASON" in table and f"{row.pk}" in table and "UnknownEventType" in table and "acme" in table


def test_it_requeues_by_id_or_every_pending_one_of_a_reason() -> None:
    a, b, c = record(letter(), letter(reason="MissingEventType"), letter(reason="MissingEventType"))
    assert "Requeued 1 dead letter(s)." in dlq("requeue", str(a.pk))
    assert "Requeued 2 dead letter(s)." in dlq("requeue", "--all", "--reason", "MissingEventType")
    assert set(DeadLetter.objects.values_list("status", flat=True)) == {"requeued"}
    assert c.pk != b.pk


def test_it_refuses_a_requeue_without_ids_or_all() -> None:
    with pytest.raises(CommandError, match="IDs or --all"):
        dlq("requeue")
    with pytest.raises(CommandError, match="--reason only applies with --all"):
        dlq("requeue", "1", "--reason", "MissingEventType")


def test_it_discards_pending_rows_and_skips_unknown_ids() -> None:
    (row,) = record(letter())
    assert "Discarded 1 dead letter(s); skipped 1" in dlq("discard", str(row.pk), "424242")
    row.refresh_from_db()
    assert row.status == "discarded"


# --- admin ------------------------------------------------------------------------------------------------


def test_admin_lists_filters_shows_the_payload_and_runs_the_bulk_actions(admin_client: Client) -> None:
    unknown, missing = record(letter(), letter(reason="MissingEventType", tenant="globex"))

    page = admin_client.get("/admin/events/deadletter/", {"reason": "MissingEventType"})
    assert page.status_code == 200
    assert f"/admin/events/deadletter/{missing.pk}/" in page.text
    assert f"/admin/events/deadletter/{unknown.pk}/" not in page.text
    for filtered in ({"tenant": "acme"}, {"status__exact": "pending"}):
        assert admin_client.get("/admin/events/deadletter/", filtered).status_code == 200

    detail = admin_client.get(f"/admin/events/deadletter/{unknown.pk}/change/")
    assert detail.status_code == 200 and "&quot;event_type&quot;: &quot;teleport&quot;" in detail.text

    admin_client.post(
        "/admin/events/deadletter/", {"action": "discard", "_selected_action": [missing.pk]}, follow=True
    )
    admin_client.post(
        "/admin/events/deadletter/", {"action": "requeue", "_selected_action": [unknown.pk]}, follow=True
    )
    assert dict(DeadLetter.objects.values_list("pk", "status")) == {
        unknown.pk: "requeued",
        missing.pk: "discarded",
    }
