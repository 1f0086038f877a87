"""Dead letters: what the workers could not process, kept byte-exact for review.

Services (`deadletter_record_many`, `deadletter_fix`, `deadletter_requeue`, `deadletter_discard`,
`deadletter_resolve_outcomes`) and selectors (`deadletter_list`, `deadletter_pending_ids`,
`dead_lettered_by_hour`). Admin actions and `manage.py dlq` call these and nothing else.

Fix and reprocess: `deadletter_fix` keeps an operator's corrected copy of an event beside the
original (`fixed_payload`; `payload` is never changed), validated against the catalog and the
worker's own decoding first; the next requeue publishes the copy. What happened after a requeue is
recorded on the row (`requeue_outcome`): `failed` when the event is dead-lettered again (on this
row, or as a new row when the fixed copy fails), `stored` once the event store holds it. Every fix,
requeue and outcome is appended to the row's `history` with who and when.

Recording is idempotent under redelivery: a row is unique on a fingerprint of (reason, tenant,
kind, payload), so a poison message delivered again bumps `attempts` and `last_seen` of its row.
"""

from __future__ import annotations

import hashlib
import json
import logging
from collections import Counter
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

from django.conf import settings
from django.db import transaction
from django.db.models import Case, Count, F, Q, QuerySet, Value, When
from django.db.models.functions import TruncHour
from django.utils import timezone

from cloudscale_project.errors import ErrorDetail
from cloudscale_project.metrics import platform_incr_many
from events.models import DeadLetter

logger = logging.getLogger(__name__)

Status = DeadLetter.Status
Kind = DeadLetter.Kind
Outcome = DeadLetter.RequeueOutcome


def json_payload(value: Any) -> bytes:
    """Compact JSON, keys in their received order: the same message always gives the same bytes."""
    return json.dumps(value, separators=(",", ":"), ensure_ascii=False, default=str).encode()


def event_payload(event: Any) -> bytes:
    return json_payload(event)


@dataclass(frozen=True)
class DeadLetterInput:
    reason: str
    payload: bytes
    kind: str = Kind.EVENT
    tenant: str = ""
    error: str = ""
    attempts: int = 1
    correlation_id: str = ""
    event_id: str | None = None
    received_at: datetime | None = None
    content_type: str = "application/json"
    content_encoding: str = "utf-8"
    headers: dict[str, Any] = field(default_factory=dict)

    def fingerprint(self) -> str:
        digest = hashlib.sha256()
        for part in (self.reason, self.tenant, self.kind):
            digest.update(part.encode())
            digest.update(b"\0")
        digest.update(self.payload)
        return digest.hexdigest()


def deadletter_record_many(*, letters: Sequence[DeadLetterInput]) -> int:
    """Store dead letters; return how many are new or reopened (the rest were seen before).

    A row seen again gets `attempts` added and `last_seen` moved. A `requeued` row that fails again
    goes back to `pending`; a `discarded` one stays discarded (an operator already decided).
    Two workers racing on the same new payload insert one row (ignore_conflicts on the unique
    fingerprint); at worst one delivery is missing from `attempts`, never a row too many.
    """
    if not letters:
        return 0
    by_fingerprint: dict[str, DeadLetterInput] = {}
    extra_attempts: Counter[str] = Counter()
    for letter in letters:
        fp = letter.fingerprint()
        if fp in by_fingerprint:
            extra_attempts[fp] += letter.attempts
        else:
            by_fingerprint[fp] = letter
    now = timezone.now()
    with transaction.atomic():
        existing = dict(
            DeadLetter.objects.filter(fingerprint__in=list(by_fingerprint)).values_list(
                "fingerprint", "status"
            )
        )
        new_rows = [
            _row(fp, letter, attempts=letter.attempts + extra_attempts[fp], now=now)
            for fp, letter in by_fingerprint.items()
            if fp not in existing
        ]
        DeadLetter.objects.bulk_create(new_rows, ignore_conflicts=True)
        for fp in existing:
            letter = by_fingerprint[fp]
            DeadLetter.objects.filter(fingerprint=fp).update(
                attempts=F("attempts") + letter.attempts + extra_attempts[fp],
                last_seen=now,
                error=letter.error,
                status=Case(When(status=Status.REQUEUED, then=Value(Status.PENDING)), default=F("status")),
                status_changed_at=Case(
                    When(status=Status.REQUEUED, then=Value(now)), default=F("status_changed_at")
                ),
            )
        _record_failed_requeues(by_fingerprint, now=now)
    fresh = [by_fingerprint[row.fingerprint] for row in new_rows] + [
        by_fingerprint[fp] for fp, status in existing.items() if status == Status.REQUEUED
    ]
    for letter in fresh:
        logger.warning(
            "dead-lettered %s: tenant=%s event_id=%s error=%s",
            letter.reason,
            letter.tenant or "?",
            letter.event_id,
            letter.error,
            extra={"correlation_id": letter.correlation_id or None},
        )
    platform_incr_many(
        "cloudscale_dead_letters_total",
        [({"reason": reason}, n) for reason, n in Counter(letter.reason for letter in fresh).items()],
    )
    return len(fresh)


def _history_entry(action: str, *, now: datetime, by: str = "", **details: Any) -> dict[str, Any]:
    entry: dict[str, Any] = {"at": now.isoformat().replace("+00:00", "Z"), "action": action}
    if by:
        entry["by"] = by
    entry.update(details)
    return entry


def _record_failed_requeues(by_fingerprint: dict[str, DeadLetterInput], *, now: datetime) -> None:
    """Tell requeued rows that their event came back as a dead letter (inside the caller's transaction).

    The same payload failing again is the row itself (reopened above). A fixed copy that fails has
    a payload of its own, so it is a row of its own; the row it was fixed from is found by
    (tenant, event_id) and points to it.
    """
    event_keys = Q()
    for letter in by_fingerprint.values():
        if letter.event_id:
            event_keys |= Q(tenant=letter.tenant, event_id=letter.event_id)
    waiting = Q(requeue_outcome=Outcome.PUBLISHED) & (Q(fingerprint__in=list(by_fingerprint)) | event_keys)
    rows = list(DeadLetter.objects.select_for_update().filter(waiting))
    if not rows:
        return
    by_event = {
        (letter.tenant, letter.event_id): fp for fp, letter in by_fingerprint.items() if letter.event_id
    }
    new_ids = dict(
        DeadLetter.objects.filter(fingerprint__in=list(by_fingerprint)).values_list("fingerprint", "pk")
    )
    for row in rows:
        fp = (
            row.fingerprint
            if row.fingerprint in by_fingerprint
            else by_event.get((row.tenant, row.event_id or ""))
        )
        if fp is None:
            continue
        letter = by_fingerprint[fp]
        if fp == row.fingerprint:
            error = f"{letter.reason}: {letter.error}"
            details: dict[str, Any] = {"reason": letter.reason, "error": letter.error}
        else:
            error = f"dead-lettered again as #{new_ids.get(fp)} ({letter.reason}): {letter.error}"
            details = {"reason": letter.reason, "error": letter.error, "dead_letter": new_ids.get(fp)}
        row.requeue_outcome = Outcome.FAILED
        row.requeue_error = error[:2000]
        row.history = [*row.history, _history_entry("failed", now=now, **details)]
        row.save(update_fields=["requeue_outcome", "requeue_error", "history"])
        logger.warning("requeued dead letter %s failed again: %s", row.pk, error)


def _row(fingerprint: str, letter: DeadLetterInput, *, attempts: int, now: datetime) -> DeadLetter:
    return DeadLetter(
        fingerprint=fingerprint,
        tenant=letter.tenant[:64],
        reason=letter.reason,
        kind=letter.kind,
        payload=letter.payload,
        content_type=letter.content_type[:128],
        content_encoding=letter.content_encoding[:64],
        headers=letter.headers,
        error=letter.error,
        attempts=attempts,
        correlation_id=letter.correlation_id[:64],
        event_id=letter.event_id,
        received_at=letter.received_at,
        status=Status.PENDING,
        first_seen=now,
        last_seen=now,
    )


# --- requeue and discard --------------------------------------------------------------------------


@dataclass
class RequeueResult:
    requeued: list[int] = field(default_factory=list)
    skipped: list[int] = field(default_factory=list)  # unknown ids or already requeued


def _publish(letter: DeadLetter) -> None:
    """Send the payload to the ingestion queue again: the operator's fixed copy if there is one."""
    from cloudscale_project.celery import app
    from events.publishing import TASK_NAME

    payload = bytes(letter.fixed_payload if letter.fixed_payload is not None else letter.payload)
    if letter.kind == Kind.RAW:
        queue = app.amqp.queues[settings.QUEUE_NAME]
        with app.producer_or_acquire() as producer:
            producer.publish(
                payload,
                exchange=queue.exchange,
                routing_key=queue.routing_key,
                declare=[queue],
                content_type=letter.content_type or "application/octet-stream",
                content_encoding=letter.content_encoding or "binary",
                headers=letter.headers or {},
                delivery_mode=2,
                retry=True,
            )
        return
    if letter.kind == Kind.BATCH:
        message = json.loads(payload)
        args, kwargs = message.get("args") or [], message.get("kwargs") or {}
    else:
        args, kwargs = (
            [],
            {
                "tenant": letter.tenant,
                "events": [json.loads(payload)],
                "correlation_id": letter.correlation_id,
            },
        )
    app.send_task(TASK_NAME, args=args, kwargs=kwargs, queue=settings.QUEUE_NAME)


def deadletter_requeue(
    *, ids: Iterable[int], by: str = "", on_progress: Callable[[int], None] | None = None
) -> RequeueResult:
    """Publish each row's payload (or its fixed copy) again and mark it `requeued`.

    The status change and the publish share one transaction per row, publish last: if the publish
    fails the row stays as it was; a worker that dead-letters the requeued message again waits for
    our commit and then reopens the row (requeued → pending), never the other way round.
    """
    result = RequeueResult()
    for pk in ids:
        with transaction.atomic():
            letter = (
                DeadLetter.objects.select_for_update()
                .filter(pk=pk, status__in=[Status.PENDING, Status.DISCARDED])
                .first()
            )
            if letter is None:
                result.skipped.append(pk)
            else:
                now = timezone.now()
                fixed = letter.fixed_payload is not None
                DeadLetter.objects.filter(pk=pk).update(
                    status=Status.REQUEUED,
                    status_changed_at=now,
                    requeued_at=now,
                    requeued_by=by[:150],
                    requeue_outcome=Outcome.PUBLISHED,
                    requeue_error="",
                    history=[
                        *letter.history,
                        _history_entry("requeued", now=now, by=by, payload="fixed" if fixed else "original"),
                    ],
                )
                _publish(letter)
                result.requeued.append(pk)
                logger.info(
                    "requeued dead letter %s (%s, tenant %s)", pk, letter.reason, letter.tenant or "?"
                )
        if on_progress:
            on_progress(1)
    return result


class FixRejected(Exception):
    """The corrected event would not pass; `errors` name the fields."""

    def __init__(self, errors: Sequence[ErrorDetail]) -> None:
        super().__init__("; ".join(f"{e.field}: {e.message}" for e in errors))
        self.errors = list(errors)


# Fields a fix may not change: they tie the event to its request, its tenant and its ledger hour
# (a changed id or arrival time would leave the original accepted event pending forever).
FIX_IMMUTABLE_FIELDS = ("event_id", "tenant", "received_at", "correlation_id")


def deadletter_event(letter: DeadLetter) -> Any:
    """The event a fix starts from: the current fixed copy, else the original payload (None if not JSON)."""
    raw = letter.fixed_payload if letter.fixed_payload is not None else letter.payload
    try:
        return json.loads(bytes(raw))
    except ValueError:
        return None


def deadletter_fix_errors(*, letter: DeadLetter, event: Any) -> list[ErrorDetail]:
    """Why `event` cannot replace the letter's event: the catalog's checks, then the worker's."""
    from events.pipeline import EventRejected, decode_event
    from events.schemas import EventIn, validate_event

    if letter.kind != Kind.EVENT:
        return [ErrorDetail("event", f"only single events can be fixed; this dead letter is a {letter.kind}")]
    if not isinstance(event, dict):
        return [ErrorDetail("event", "the event must be a JSON object")]
    try:
        original = json.loads(bytes(letter.payload))
    except ValueError:
        original = {}
    original = original if isinstance(original, dict) else {}
    errors = [
        ErrorDetail(name, "cannot be changed by a fix")
        for name in FIX_IMMUTABLE_FIELDS
        if name in original and event.get(name) != original.get(name)
    ]
    # The catalog (what the API accepts): the client's fields of the enriched event.
    client_view = {k: event[k] for k in EventIn.model_fields if event.get(k) is not None}
    _, catalog_errors = validate_event(client_view)
    errors += catalog_errors
    if not errors:
        try:
            decode_event(event, tenant=letter.tenant)
        except EventRejected as exc:
            errors.append(ErrorDetail("event", exc.error))
    return errors


def _changes(before: Any, after: Any, prefix: str = "") -> list[dict[str, Any]]:
    """Field-by-field differences, nested objects by dotted path (properties.url)."""
    if isinstance(before, dict) and isinstance(after, dict):
        out: list[dict[str, Any]] = []
        for key in [*before, *(k for k in after if k not in before)]:
            out += _changes(before.get(key), after.get(key), f"{prefix}{key}.")
        return out
    if before == after:
        return []
    return [{"field": prefix.rstrip("."), "old": before, "new": after}]


def deadletter_fix(*, letter_id: int, event: Any, by: str) -> DeadLetter:
    """Keep `event` as the letter's corrected copy, for the next requeue to publish.

    Raises FixRejected (field errors) if the copy would not pass the catalog or the worker's
    decoding, or the row cannot be fixed (unknown, requeued and not back yet, not a single event).
    """
    with transaction.atomic():
        letter = DeadLetter.objects.select_for_update().filter(pk=letter_id).first()
        if letter is None:
            raise FixRejected([ErrorDetail("id", f"no dead letter {letter_id}")])
        if letter.status == Status.REQUEUED:
            raise FixRejected([ErrorDetail("status", "requeued and not back yet: wait for its outcome")])
        errors = deadletter_fix_errors(letter=letter, event=event)
        if errors:
            raise FixRejected(errors)
        try:
            original = json.loads(bytes(letter.payload))
        except ValueError:
            original = None
        changes = _changes(deadletter_event(letter), event)
        now = timezone.now()
        letter.fixed_payload = event_payload(event) if event != original else None
        letter.fixed_by = by[:150]
        letter.fixed_at = now
        letter.history = [*letter.history, _history_entry("fixed", now=now, by=by, changes=changes)]
        letter.save(update_fields=["fixed_payload", "fixed_by", "fixed_at", "history"])
    logger.info(
        "dead letter %s fixed by %s: %s", letter_id, by or "?", ", ".join(c["field"] for c in changes)
    )
    return letter


def deadletter_fix_fields(*, letter_id: int, assignments: Mapping[str, Any], by: str) -> DeadLetter:
    """`deadletter_fix` with dotted-path assignments ({"event_type": "page_view", "properties.url": ...})."""
    letter = DeadLetter.objects.filter(pk=letter_id).first()
    if letter is None:
        raise FixRejected([ErrorDetail("id", f"no dead letter {letter_id}")])
    event = deadletter_event(letter)
    if not isinstance(event, dict):
        raise FixRejected([ErrorDetail("event", "the payload is not a JSON object; fix it from a file")])
    for path, value in assignments.items():
        target = event
        *parents, leaf = path.split(".")
        for part in parents:
            child = target.get(part)
            if not isinstance(child, dict):
                child = target[part] = {}
            target = child
        target[leaf] = value
    return deadletter_fix(letter_id=letter_id, event=event, by=by)


def deadletter_resolve_outcomes(*, letters: Iterable[DeadLetter]) -> int:
    """Mark requeued events the store now holds as `stored`; return how many were marked.

    Checked when operators look (admin list, `dlq list`), not by the workers: the hot path stays
    free of dead-letter bookkeeping. A failure is recorded by the worker as it dead-letters again.
    """
    from events.stores import StoreUnavailable, get_event_store

    waiting = [
        letter
        for letter in letters
        if letter.requeue_outcome == Outcome.PUBLISHED and letter.kind == Kind.EVENT and letter.event_id
    ]
    if not waiting:
        return 0
    store = get_event_store()
    marked = 0
    now = timezone.now()
    for letter in waiting:
        try:
            found = store.get(tenant=letter.tenant, event_id=letter.event_id or "")
        except StoreUnavailable:
            logger.warning("could not check requeued dead letter %s against the store", letter.pk)
            return marked
        if found is None:
            continue
        history = [*letter.history, _history_entry("stored", now=now)]
        if DeadLetter.objects.filter(pk=letter.pk, requeue_outcome=Outcome.PUBLISHED).update(
            requeue_outcome=Outcome.STORED, history=history
        ):
            letter.requeue_outcome, letter.history = Outcome.STORED, history
            marked += 1
    return marked


def deadletter_outcome_text(letter: DeadLetter) -> str:
    """What happened after the last requeue, in words for the list."""
    if letter.requeue_outcome == Outcome.FAILED:
        return f"failed again: {letter.requeue_error}"
    return str(Outcome(letter.requeue_outcome).label) if letter.requeue_outcome else ""


def deadletter_discard(*, ids: Iterable[int]) -> int:
    """Mark pending rows `discarded` (kept for the record); return how many changed."""
    return DeadLetter.objects.filter(pk__in=list(ids), status=Status.PENDING).update(
        status=Status.DISCARDED, status_changed_at=timezone.now()
    )


# --- selectors ------------------------------------------------------------------------------------


def deadletter_list(
    *, reason: str | None = None, status: str | None = None, tenant: str | None = None
) -> QuerySet[DeadLetter]:
    rows = DeadLetter.objects.all()
    if reason:
        rows = rows.filter(reason=reason)
    if status:
        rows = rows.filter(status=status)
    if tenant is not None:
        rows = rows.filter(tenant=tenant)
    return rows.order_by("-last_seen", "-id")


def deadletter_pending_ids(*, reason: str | None = None) -> list[int]:
    return list(deadletter_list(reason=reason, status=Status.PENDING).values_list("id", flat=True))


def deadletter_as_dict(letter: DeadLetter) -> dict[str, Any]:
    """The `dlq list --json` shape."""
    return {
        "id": letter.pk,
        "tenant": letter.tenant or None,
        "reason": letter.reason,
        "error": letter.error,
        "attempts": letter.attempts,
        "status": letter.status,
        "created_at": letter.first_seen.isoformat().replace("+00:00", "Z"),
    }


def deadletter_payload_text(letter: DeadLetter) -> str:
    """The payload for reading: indented if it is JSON, as text if UTF-8, else as escaped bytes."""
    payload = bytes(letter.payload)
    try:
        text = payload.decode("utf-8")
    except UnicodeDecodeError:
        return repr(payload)
    try:
        return json.dumps(json.loads(text), indent=2, ensure_ascii=False)
    except ValueError:
        return text


def dead_lettered_by_hour(*, tenant: str, since: datetime, until: datetime) -> dict[datetime, int]:
    """Dead-lettered events per hour of their `received_at`, for the loss ledger.

    Counts distinct event ids of rows still dead (pending or discarded): a requeued event is
    pending again until the store or a new dead letter accounts for it.
    """
    rows = (
        DeadLetter.objects.filter(
            tenant=tenant,
            event_id__isnull=False,
            received_at__gte=since,
            received_at__lt=until,
            status__in=[Status.PENDING, Status.DISCARDED],
        )
        .annotate(hour=TruncHour("received_at"))
        .values("hour")
        .annotate(n=Count("event_id", distinct=True))
    )
    return {row["hour"]: row["n"] for row in rows}
