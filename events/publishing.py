"""Durable publish of one request's events as one message (docs/api.md, "Delivery guarantee").

A 202 is returned only after this returns: on Redis the LPUSH reply (with the embedded server's
`appendfsync always`, after the write reached disk), on RabbitMQ the publisher confirm. Transient
broker errors get a short bounded retry; then the caller answers 503.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from typing import Any

import orjson
from django.conf import settings

from cloudscale_project.celery import app
from cloudscale_project.errors import BrokerUnavailable

logger = logging.getLogger(__name__)

# The one name of the batch task (events/tasks.py) that publishers, requeue and the Service Bus
# dead-letter import all refer to.
TASK_NAME = "events.process_batch"


def _broker_errors() -> tuple[type[BaseException], ...]:
    """Everything a publish can raise when the broker is away, on every transport we support."""
    errors: list[type[BaseException]] = [OSError, TimeoutError]
    from kombu.exceptions import KombuError

    errors.append(KombuError)
    try:
        from redis.exceptions import RedisError

        errors.append(RedisError)
    except ImportError:  # pragma: no cover - redis is a dependency
        pass
    try:  # Service Bus raises azure-core errors (ServiceRequestError) that kombu does not map
        from azure.core.exceptions import AzureError

        errors.append(AzureError)
    except ImportError:  # pragma: no cover
        pass
    return tuple(errors)


_BROKER_ERRORS = _broker_errors()


def publish_events(*, tenant: str, events: Sequence[dict[str, Any]], correlation_id: str) -> None:
    """Publish one `events.process_batch` message; BrokerUnavailable if it is not durably in the broker."""
    try:
        app.send_task(
            TASK_NAME,
            kwargs={"tenant": tenant, "events": list(events), "correlation_id": correlation_id},
            queue=settings.QUEUE_NAME,
            retry=True,
            retry_policy={
                "max_retries": settings.PUBLISH_ATTEMPTS - 1,
                "interval_start": 0.05,
                "interval_step": 0.2,
                "interval_max": 0.5,
            },
            ignore_result=True,
        )
    except _BROKER_ERRORS as exc:
        logger.warning(
            "publish failed for %d event(s) of %s: %s", len(events), tenant, exc,
            extra={"tenant": tenant},
        )  # fmt: skip
        raise BrokerUnavailable(settings.BROKER_RETRY_AFTER_SECONDS) from exc


# What a message costs beyond its events: Celery's envelope and headers, and base64 (4/3) on
# transports that encode the body (Service Bus).
_ENVELOPE_BYTES = 2048
_ENCODING_FACTOR = 4 / 3


def split_for_broker(events: Sequence[dict[str, Any]], max_message_bytes: int) -> list[list[dict[str, Any]]]:
    """Split one request's events into as few messages as fit the broker's size limit (0 = no limit).

    Service Bus Standard refuses messages over 256 KB; a 500-event batch can exceed that.
    """
    if not events:
        return []
    if max_message_bytes <= 0:
        return [list(events)]
    budget = max_message_bytes / _ENCODING_FACTOR - _ENVELOPE_BYTES
    chunks: list[list[dict[str, Any]]] = [[]]
    used = 0.0
    for event in events:
        size = len(orjson.dumps(event)) + 2
        if chunks[-1] and used + size > budget:
            chunks.append([])
            used = 0.0
        chunks[-1].append(event)
        used += size
    return chunks
