"""Dead letters: what the workers could not process, kept byte-exact for review.

Services (`deadletter_record_many`, `deadletter_requeue`, `deadletter_discard`) and selectors
(`deadletter_list`, `deadletter_pending_ids`, `dead_lettered_by_hour`). Admin actions and
`manage.py dlq` call these and nothing else.

Recording is idempotent under redelivery: a row is unique on a fingerprint of (reason, tenant,
kind, payload), so a poison message delivered again bumps `attempts` and `last_seen` of its row.
"""

from __future__ import annotations

import hashlib
import json
import logging
from collections import Counter
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

from django.conf import settings
from django.db import transaction
from django.db.models import Case, Count, F, QuerySet, Value, When
from django.db.models.functions import TruncHour
from django.utils import timezone

from cloudscale_project.metrics import platform_incr_many
from events.models import DeadLetter

logger = logging.getLogger(__name__)

Status = DeadLetter.Status
Kind = DeadLetter.Kind


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
    """Send the original payload to the ingestion queue again."""
    from cloudscale_project.celery import app
    from events.publishing import TASK_NAME

    payload = bytes(letter.payload)
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
    *, ids: Iterable[int], on_progress: Callable[[int], None] | None = None
) -> RequeueResult:
    """Publish each row's payload again and mark it `requeued`.

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
                DeadLetter.objects.filter(pk=pk).update(
                    status=Status.REQUEUED, status_changed_at=timezone.now()
                )
                _publish(letter)
                result.requeued.append(pk)
                logger.info(
                    "requeued dead letter %s (%s, tenant %s)", pk, letter.reason, letter.tenant or "?"
                )
        if on_progress:
            on_progress(1)
    return result


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
