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

from typing import Any

from django.conf import settings

from cloudscale_project.celery import app


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
