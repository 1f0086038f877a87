"""SDK ingestion: SDK messages → native-shaped events → the native ingestion path → warnings.

Nothing here re-implements the native guarantees: validation is the native validator (catalog types)
or its custom-event variant, enrichment is `enrich_event`, and dedup, publish, ledger and metrics are
`ingest_enriched`, the same call `POST /api/events/batch` ends in.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable
from dataclasses import dataclass, field
from datetime import timedelta
from typing import Any

from django.conf import settings
from django.db import DatabaseError

from cloudscale_project.errors import BrokerUnavailable, ErrorDetail
from cloudscale_project.timeutil import utcnow
from compat.mapping import Candidate, Issue, Rejection
from compat.models import IngestionWarning
from events.enrichment import enrich_event
from events.ingestion import Receipts, RequestContext, ingest_enriched
from events.schemas import EventIn, validate_custom_event, validate_event

logger = logging.getLogger(__name__)

# At most this many warnings are written per request (one more says how many were left out): a
# 5 MiB body of empty objects must not become a million rows.
MAX_WARNINGS_PER_REQUEST = 100


@dataclass(frozen=True)
class SdkWarning:
    index: int
    event_name: str
    event_id: str
    issue: Issue


@dataclass
class SdkReceipt:
    receipts: Receipts
    warnings: list[SdkWarning] = field(default_factory=list)

    def counts(self) -> dict[str, int]:
        return {
            "accepted": len(self.receipts.accepted),
            "duplicates": len(self.receipts.duplicates),
            "rejected": len(self.receipts.rejected),
        }


def _details_text(errors: Iterable[ErrorDetail]) -> str:
    return "; ".join(f"{d.field}: {d.message}" for d in errors)


def _validated(candidate: Candidate) -> tuple[EventIn | None, bool, list[Issue]]:
    """(event, custom?, issues): a spec name becomes its catalog type when it validates as one,
    else a custom event under its own name, with a warning saying why; None when neither is valid."""
    issues = list(candidate.issues)
    raw = candidate.event
    if candidate.spec_type is not None:
        valid, errors = validate_event(raw)
        if valid is not None:
            return valid, False, issues
        raw = {**raw, "event_type": candidate.name, "properties": candidate.custom_properties}
        not_mapped = Issue(
            "not_mapped",
            errors[0].field if errors else "",
            f"stored as the custom event {candidate.name!r}, not as {candidate.spec_type}: "
            f"{_details_text(errors)}",
        )
        custom, _ = validate_custom_event(raw)
        if custom is not None:
            return custom, True, [*issues, not_mapped]
        return None, False, [*issues, _invalid(errors)]
    custom, custom_errors = validate_custom_event(raw)
    if custom is not None:
        return custom, True, issues
    return None, False, [*issues, _invalid(custom_errors)]


def _invalid(errors: list[ErrorDetail]) -> Issue:
    return Issue("invalid_event", errors[0].field if errors else "", _details_text(errors)[:1000])


def compat_ingest(
    *, protocol: str, mapped: list[Candidate | Rejection], context: RequestContext
) -> SdkReceipt:
    """Ingest a request's mapped messages; a receipt of counts and the warnings already recorded.

    Raises BrokerUnavailable when not every valid event could be published: an SDK only sees the
    status, so a request answered 200 must have every event it can keep in the broker. A retry is
    safe: what was published is then a duplicate.
    """
    receipts = Receipts()
    warnings: list[SdkWarning] = []
    enriched: list[tuple[int, dict[str, Any]]] = []
    for index, item in enumerate(mapped):
        if isinstance(item, Rejection):
            warnings.append(SdkWarning(index, item.name, item.event_id, item.issue))
            receipts.rejected.append((index, [ErrorDetail(item.issue.field, item.issue.message)]))
            continue
        valid, custom, issues = _validated(item)
        if valid is None:
            event_id = str(item.event.get("event_id", ""))
            warnings += [SdkWarning(index, item.name, event_id, issue) for issue in issues]
            receipts.rejected.append((index, [ErrorDetail(issues[-1].field, issues[-1].message)]))
            continue
        event = enrich_event(
            valid,
            tenant=context.tenant,
            received_at=context.received_at,
            ip=context.ip,
            user_agent=context.user_agent,
            correlation_id=context.correlation_id,
        )
        if custom:
            event["custom"] = True
        if item.context:
            event["context"] = item.context
        enriched.append((index, event))
        # Warnings of kept events name the id they are stored under (a fresh one if the SDK sent none).
        warnings += [SdkWarning(index, item.name, event["event_id"], issue) for issue in issues]
    rejected_here = len(receipts.rejected)
    ingest_enriched(enriched=enriched, receipts=receipts, context=context, total=len(mapped))
    if len(receipts.rejected) > rejected_here:
        # A later broker message of a split request failed (events/ingestion.py): the events of the
        # earlier ones stay published and become duplicates when the SDK retries the request.
        raise BrokerUnavailable(settings.BROKER_RETRY_AFTER_SECONDS)
    warnings_record(tenant=context.tenant, protocol=protocol, warnings=warnings, context=context)
    return SdkReceipt(receipts=receipts, warnings=warnings)


def warnings_record(
    *, tenant: str, protocol: str, warnings: list[SdkWarning], context: RequestContext
) -> None:
    """Write the request's warnings (bounded). The events are already published by now, so a
    database failure here is logged, not turned into an error the SDK would retry."""
    if not warnings:
        return
    rows = [
        IngestionWarning(
            tenant=tenant,
            time=context.received_at,
            protocol=protocol,
            event_name=w.event_name[:200],
            event_id=w.event_id[:64],
            code=w.issue.code,
            field=w.issue.field[:200],
            message=w.issue.message[:1000],
            correlation_id=context.correlation_id[:64],
        )
        for w in warnings[:MAX_WARNINGS_PER_REQUEST]
    ]
    if len(warnings) > MAX_WARNINGS_PER_REQUEST:
        rows.append(
            IngestionWarning(
                tenant=tenant,
                time=context.received_at,
                protocol=protocol,
                code="warnings_truncated",
                message=f"{len(warnings) - MAX_WARNINGS_PER_REQUEST} more warnings of this request "
                "were not recorded",
                correlation_id=context.correlation_id[:64],
            )
        )
    try:
        IngestionWarning.objects.bulk_create(rows)
    except DatabaseError:
        logger.exception("could not record %d ingestion warning(s) of %s", len(rows), tenant)
        return
    codes = ", ".join(sorted({w.issue.code for w in warnings}))
    logger.info(
        "recorded %d ingestion warning(s) for %s (%s)", len(rows), tenant, codes, extra={"tenant": tenant}
    )


def warnings_purge_expired() -> int:
    """Delete warnings older than the retention (COMPAT_WARNING_RETENTION_DAYS, 30 days)."""
    cutoff = utcnow() - timedelta(days=settings.COMPAT_WARNING_RETENTION_DAYS)
    deleted, _ = IngestionWarning.objects.filter(time__lt=cutoff).delete()
    return deleted
