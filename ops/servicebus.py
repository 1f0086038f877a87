"""Azure Service Bus operations: provision the ingestion queue, import the broker's dead letters.

Both reach Service Bus through the Celery broker connection's channel (kombu's transport, see
`ops/servicebus_transport.py`), so they use exactly the credentials the workers use: a SAS key or
`DefaultAzureCredential` from `CLOUDSCALE_BROKER_URL`.

Dead letters: after `max_delivery_count` deliveries (a batch that keeps crashing its worker, or
keeps being abandoned) or on TTL expiry, Service Bus moves a message into the queue's
`$DeadLetterQueue` sub-queue, out of the workers' reach. `servicebus_import_dead_letters` turns
each such message into rows of our dead-letter table (reason and description as the broker gave
them), so it is reviewed, requeued or discarded like any other dead letter.
"""

from __future__ import annotations

import base64
import binascii
import json
import logging
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from functools import partial
from typing import Any, Final, Literal

import isodate
from django.conf import settings
from django.db import transaction

from cloudscale_project.timeutil import parse_iso
from events.deadletters import DeadLetterInput, deadletter_record_many, event_payload, json_payload
from events.models import DeadLetter
from events.publishing import TASK_NAME

logger = logging.getLogger(__name__)

# The queues' settings (docs/api.md, "Service Bus queues").
QUEUE_PROPERTIES: Final[dict[str, Any]] = {
    "max_size_in_megabytes": 5 * 1024,
    "default_message_time_to_live": timedelta(days=14),
    "lock_duration": timedelta(minutes=5),
    "max_delivery_count": 10,
    "dead_lettering_on_message_expiration": True,
}
# Messages taken from the dead-letter sub-queue per receive call; each is locked until imported.
IMPORT_RECEIVE_BATCH = 20
# The model's reason column; broker reasons ("MaxDeliveryCountExceeded", "TTLExpiredException")
# fit, an application's custom reason may be cut.
_REASON_MAX_LENGTH = DeadLetter._meta.get_field("reason").max_length or 32
_UNKNOWN_REASON = "DeadLettered"


class ServiceBusNotConfigured(Exception):
    pass


@contextmanager
def servicebus_channel() -> Iterator[Any]:
    """The kombu Service Bus channel of the configured broker (its `queue_service` is a
    `ServiceBusClient`, its `queue_mgmt_service` a `ServiceBusAdministrationClient`)."""
    if settings.BROKER_SCHEME != "azureservicebus":
        raise ServiceBusNotConfigured(
            f"CLOUDSCALE_BROKER_URL is a {settings.BROKER_SCHEME}:// URL; "
            "set it to azureservicebus://<policy>:<key>@<namespace> or "
            "azureservicebus://DefaultAzureCredential@<namespace>"
        )
    from cloudscale_project.celery import app

    with app.connection_for_write() as connection:
        yield connection.default_channel


def servicebus_entity_name(channel: Any, queue: str) -> str:
    """The Service Bus entity kombu uses for a Celery queue name (prefix, punctuation rules)."""
    return str(channel.entity_name(channel.queue_name_prefix + queue))


# --- provisioning ---------------------------------------------------------------------------------


@dataclass(frozen=True)
class ProvisionResult:
    queue: str
    action: Literal["created", "updated", "unchanged"]
    changed: dict[str, tuple[Any, Any]] = field(default_factory=dict)  # property → (was, now)


def _comparable(value: Any) -> Any:
    """The SDK returns durations as timedelta or ISO 8601 text depending on the path."""
    return isodate.parse_duration(value) if isinstance(value, str) and value.startswith("P") else value


def servicebus_provision_queue(*, admin: Any, queue: str) -> ProvisionResult:
    """Create the queue with QUEUE_PROPERTIES, or bring an existing one to them. Idempotent.

    A queue a worker created lazily before provisioning (kombu declares missing queues with only a
    lock duration) is corrected here. Properties outside QUEUE_PROPERTIES are left as they are.
    """
    from azure.core.exceptions import ResourceExistsError, ResourceNotFoundError

    try:
        current = admin.get_queue(queue)
    except ResourceNotFoundError:
        try:
            admin.create_queue(queue_name=queue, **QUEUE_PROPERTIES)
        except ResourceExistsError:
            current = admin.get_queue(queue)  # created meanwhile (a worker's declare): check it
        else:
            logger.info("created Service Bus queue %s", queue)
            return ProvisionResult(queue=queue, action="created")
    changed = {
        name: (getattr(current, name), wanted)
        for name, wanted in QUEUE_PROPERTIES.items()
        if _comparable(getattr(current, name)) != wanted
    }
    if not changed:
        return ProvisionResult(queue=queue, action="unchanged")
    for name, (_, wanted) in changed.items():
        setattr(current, name, wanted)
    admin.update_queue(current)
    logger.info("updated Service Bus queue %s: %s", queue, ", ".join(sorted(changed)))
    return ProvisionResult(queue=queue, action="updated", changed=changed)


# --- dead-letter import ---------------------------------------------------------------------------


def _message_body(message: Any) -> bytes:
    body = message.body
    if isinstance(body, bytes):
        return body
    if isinstance(body, str):
        return body.encode()
    return b"".join(body)  # the SDK yields data sections


def _received_at(event: dict[str, Any]) -> datetime | None:
    value = event.get("received_at")
    if not isinstance(value, str):
        return None
    try:
        return parse_iso(value)
    except ValueError:
        return None


def _text(value: Any, limit: int) -> str:
    return value[:limit] if isinstance(value, str) else ""


def dead_letters_from_message(message: Any) -> list[DeadLetterInput]:
    """What one broker dead letter becomes in our table (pure: no I/O).

    - an `events.process_batch` message: one row per event (kind `event`), so the loss ledger
      counts its events as dead-lettered and a requeue re-publishes each event;
    - another decodable task message with usable arguments: one `batch` row;
    - anything else: one `raw` row with the body and headers exactly as on the broker.
    Reason and description are the broker's; `attempts` is its delivery count.
    """
    reason = (message.dead_letter_reason or _UNKNOWN_REASON)[:_REASON_MAX_LENGTH]
    common: dict[str, Any] = {
        "reason": reason,
        "error": message.dead_letter_error_description or "",
        "attempts": max(1, int(message.delivery_count or 1)),
    }
    body = _message_body(message)
    envelope = _kombu_envelope(body)
    if envelope is None:
        return [
            DeadLetterInput(
                kind=DeadLetter.Kind.RAW,
                payload=body,
                content_type=message.content_type or "application/octet-stream",
                content_encoding="binary",
                **common,
            )
        ]
    raw, headers = envelope["raw"], envelope["headers"]
    task_message = _task_arguments(raw) if headers.get("task") == TASK_NAME else None
    if task_message is not None:
        args, kwargs = task_message
        tenant = _text(kwargs.get("tenant"), 64)
        correlation_id = _text(kwargs.get("correlation_id"), 64)
        events = kwargs.get("events")
        if not args and isinstance(events, list) and events and all(isinstance(e, dict) for e in events):
            return [
                DeadLetterInput(
                    kind=DeadLetter.Kind.EVENT,
                    tenant=tenant,
                    payload=event_payload(event),
                    correlation_id=_text(event.get("correlation_id"), 64) or correlation_id,
                    event_id=_text(event.get("event_id"), 128) or None,
                    received_at=_received_at(event),
                    **common,
                )
                for event in events
            ]
        return [
            DeadLetterInput(
                kind=DeadLetter.Kind.BATCH,
                tenant=tenant,
                payload=json_payload({"args": args, "kwargs": kwargs}),
                correlation_id=correlation_id,
                **common,
            )
        ]
    return [
        DeadLetterInput(
            kind=DeadLetter.Kind.RAW,
            tenant="",
            payload=raw,
            content_type=envelope["content_type"],
            content_encoding=envelope["content_encoding"],
            headers=headers,
            correlation_id=_text(headers.get("correlation_id"), 64),
            **common,
        )
    ]


def _kombu_envelope(body: bytes) -> dict[str, Any] | None:
    """kombu's virtual-transport envelope: {"body", "content-type", "headers", "properties"}."""
    try:
        envelope = json.loads(body)
    except (UnicodeDecodeError, ValueError):
        return None
    if not isinstance(envelope, dict) or not isinstance(envelope.get("body"), str):
        return None
    properties: dict[str, Any] = (
        envelope["properties"] if isinstance(envelope.get("properties"), dict) else {}
    )
    headers: dict[str, Any] = envelope["headers"] if isinstance(envelope.get("headers"), dict) else {}
    text: str = envelope["body"]
    if properties.get("body_encoding") == "base64":
        try:
            raw = base64.b64decode(text, validate=True)
        except (binascii.Error, ValueError):
            return None
    else:
        raw = text.encode()
    return {
        "raw": raw,
        "headers": headers,
        "content_type": str(envelope.get("content-type") or "application/octet-stream")[:128],
        "content_encoding": str(envelope.get("content-encoding") or "binary")[:64],
    }


def _task_arguments(raw: bytes) -> tuple[list[Any], dict[str, Any]] | None:
    """Celery protocol 2 body: [args, kwargs, embed]."""
    try:
        decoded = json.loads(raw)
    except (UnicodeDecodeError, ValueError):
        return None
    if not isinstance(decoded, list) or len(decoded) < 2:
        return None
    args, kwargs = decoded[0], decoded[1]
    if not isinstance(args, list) or not isinstance(kwargs, dict):
        return None
    return args, kwargs


@dataclass
class DeadLetterImport:
    messages: int = 0  # broker messages imported and completed
    recorded: int = 0  # dead-letter rows new or reopened (the rest were imported before)
    lock_lost: int = 0  # imported, but the broker lock ran out first: the next run sees them again


def servicebus_import_dead_letters(
    *,
    receiver: Any,
    max_messages: int | None = None,
    wait_seconds: float = 5.0,
    on_progress: Callable[[int], None] | None = None,
) -> DeadLetterImport:
    """Drain `receiver` (a peek-lock receiver of the queue's dead-letter sub-queue) into our table.

    Each message is completed on the broker only after its rows are committed: a crash in between
    leaves it in the sub-queue, and importing it again only bumps the `attempts` of its rows (rows
    are unique per reason, tenant and payload). If the rows cannot be written, the message is
    abandoned (back in the sub-queue at once) and the error raised. Stops when no message arrives
    within `wait_seconds`, or after `max_messages`.
    """
    result = DeadLetterImport()
    while max_messages is None or result.messages < max_messages:
        wanted = IMPORT_RECEIVE_BATCH
        if max_messages is not None:
            wanted = min(wanted, max_messages - result.messages)
        messages = receiver.receive_messages(max_message_count=wanted, max_wait_time=wait_seconds)
        if not messages:
            break
        for position, message in enumerate(messages):
            letters = dead_letters_from_message(message)
            try:
                with transaction.atomic():
                    result.recorded += deadletter_record_many(letters=letters)
                    # After the commit of the outermost transaction, never before.
                    transaction.on_commit(partial(_complete, receiver, message, result))
            except Exception:
                # Give this and the rest of the received batch back now, not at lock expiry.
                for unsettled in messages[position:]:
                    _abandon(receiver, unsettled)
                raise
            result.messages += 1
            logger.info(
                "imported Service Bus dead letter #%s (%s, %d delivery attempts) as %d row(s)",
                message.sequence_number,
                letters[0].reason,
                letters[0].attempts,
                len(letters),
            )
            if on_progress:
                on_progress(1)
    return result


def _complete(receiver: Any, message: Any, result: DeadLetterImport) -> None:
    from azure.servicebus.exceptions import MessageLockLostError

    try:
        receiver.complete_message(message)
    except MessageLockLostError:
        result.lock_lost += 1
        logger.warning(
            "lock of Service Bus dead letter #%s expired before it was completed; "
            "the next import sees it again and only bumps the attempts of its rows",
            message.sequence_number,
        )


def _abandon(receiver: Any, message: Any) -> None:
    from azure.core.exceptions import AzureError

    try:
        receiver.abandon_message(message)
    except AzureError:
        logger.warning(
            "could not abandon Service Bus dead letter #%s; its lock runs out", message.sequence_number
        )


@contextmanager
def servicebus_dead_letter_receiver(*, channel: Any, queue: str, wait_seconds: float = 5.0) -> Iterator[Any]:
    """A peek-lock receiver of `queue`'s dead-letter sub-queue, closed on exit."""
    from azure.servicebus import ServiceBusReceiveMode, ServiceBusSubQueue

    receiver = channel.queue_service.get_queue_receiver(
        queue_name=servicebus_entity_name(channel, queue),
        sub_queue=ServiceBusSubQueue.DEAD_LETTER,
        receive_mode=ServiceBusReceiveMode.PEEK_LOCK,
        max_wait_time=wait_seconds,
    )
    with receiver:
        yield receiver


def servicebus_import_queue_dead_letters(
    *,
    queue: str | None = None,
    max_messages: int | None = None,
    wait_seconds: float = 5.0,
    on_progress: Callable[[int], None] | None = None,
) -> DeadLetterImport:
    """`manage.py import_servicebus_dead_letters`: import the ingestion queue's dead-letter sub-queue."""
    with (
        servicebus_channel() as channel,
        servicebus_dead_letter_receiver(
            channel=channel, queue=queue or settings.QUEUE_NAME, wait_seconds=wait_seconds
        ) as receiver,
    ):
        return servicebus_import_dead_letters(
            receiver=receiver, max_messages=max_messages, wait_seconds=wait_seconds, on_progress=on_progress
        )
