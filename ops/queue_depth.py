"""How many messages wait in a broker queue, on every broker we support.

- Redis and RabbitMQ: kombu's passive `queue_declare` returns the message count (Redis counts the
  priority sub-lists too). A queue that does not exist yet raises a channel error (404): that is
  depth 0. Both count ready messages only, not those prefetched by workers and not yet acked.
- Azure Service Bus: a "passive" declare would *create* a missing queue, and the transport's count is
  `total_message_count`, which includes the broker's dead-letter sub-queue and scheduled messages.
  We ask the administration client for `active_message_count` (the backlog) instead, through the
  transport channel so the same credentials (SAS or managed identity) are used.
"""

from __future__ import annotations

import base64
import json
from datetime import datetime
from typing import Any

from django.conf import settings
from django.utils import timezone
from kombu import Queue

from cloudscale_project.celery import app
from cloudscale_project.timeutil import parse_iso


def queue_depth(*, queue: str | None = None, broker_url: str | None = None) -> int:
    """Messages waiting in `queue` (default: the ingestion queue) on the broker (default: ours).

    Raises the broker's connection errors: the caller decides what a failed sample means.
    """
    name = queue or settings.QUEUE_NAME
    with app.connection_for_read(broker_url) as conn:
        conn.ensure_connection(max_retries=1)
        channel = conn.default_channel
        # Service Bus, by kombu's transport or ours (CELERY_BROKER_TRANSPORT names a subclass, so
        # the URL scheme is not what the connection reports): its channels have the admin client.
        if hasattr(type(channel), "queue_mgmt_service"):
            return _service_bus_active_count(channel, name)
        try:
            _, message_count, _ = channel.queue_declare(queue=name, passive=True)
        except conn.channel_errors:
            return 0  # the queue was never declared: nothing waits in it
        return int(message_count)


def _service_bus_active_count(channel: Any, queue: str) -> int:
    from azure.core.exceptions import ResourceNotFoundError

    entity = channel.entity_name(channel.queue_name_prefix + queue)
    try:
        properties = channel.queue_mgmt_service.get_queue_runtime_properties(entity)
    except ResourceNotFoundError:
        return 0
    return int(properties.active_message_count)


def oldest_message_age(*, queue: str | None = None, now: datetime | None = None) -> float | None:
    """Seconds since the oldest waiting message's events reached the API; None if nothing waits.

    The age is the earliest `received_at` of the message's events (the API's time of acceptance),
    found without taking the message away for good:
    - Redis: the tail of the queue's list (LINDEX -1, the next message BRPOP hands out);
    - Service Bus: a peek (its enqueued time when the body has no events);
    - RabbitMQ and others: a get without ack, then a reject with requeue (RabbitMQ puts the message
      back in its place; it is marked redelivered).
    Raises the broker's connection errors.
    """
    name = queue or settings.QUEUE_NAME
    now = now or timezone.now()
    with app.connection_for_read() as conn:
        conn.ensure_connection(max_retries=1)
        channel = conn.default_channel
        if hasattr(type(channel), "queue_mgmt_service"):
            return _service_bus_oldest_age(channel, name, now)
        if hasattr(channel, "_q_for_pri") and hasattr(channel, "client"):
            raw = channel.client.lindex(channel._q_for_pri(name, 0), -1)
            return None if raw is None else _age_of_envelope(raw, now)
        try:
            message = Queue(name, channel=channel, no_declare=True).get(no_ack=False)
        except conn.channel_errors:
            return None
        if message is None:
            return None
        try:
            return _age_of_body(message.body or b"", now)
        finally:
            message.requeue()


def _age_of_envelope(raw: bytes | str, now: datetime) -> float | None:
    """kombu's virtual-transport envelope (Redis, Service Bus): {"body", "properties": {body_encoding}}."""
    try:
        envelope = json.loads(raw)
        body = envelope["body"]
        if envelope.get("properties", {}).get("body_encoding") == "base64":
            body = base64.b64decode(body)
    except (ValueError, TypeError, KeyError, AttributeError):
        return None
    return _age_of_body(body, now)


def _age_of_body(body: bytes | str, now: datetime) -> float | None:
    """Celery protocol 2 body [args, kwargs, embed]; the age of its oldest event's received_at."""
    try:
        _args, kwargs, _embed = json.loads(body)
        times = [parse_iso(e["received_at"]) for e in kwargs.get("events", []) if isinstance(e, dict)]
    except (ValueError, TypeError, KeyError, AttributeError):
        return None
    return round((now - min(times)).total_seconds(), 1) if times else None


def _service_bus_oldest_age(channel: Any, queue: str, now: datetime) -> float | None:
    entity = channel.entity_name(channel.queue_name_prefix + queue)
    with channel.queue_service.get_queue_receiver(entity) as receiver:
        messages = receiver.peek_messages(max_message_count=1)
    if not messages:
        return None
    message = messages[0]
    age = _age_of_envelope(b"".join(message.body), now)
    if age is None and message.enqueued_time_utc is not None:
        age = round((now - message.enqueued_time_utc).total_seconds(), 1)
    return age
