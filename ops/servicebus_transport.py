"""kombu's Azure Service Bus transport with the gaps that hurt in production closed.

Selected by `CELERY_BROKER_TRANSPORT` when `CLOUDSCALE_BROKER_URL` is `azureservicebus://…`; the URL
forms (SAS key, `DefaultAzureCredential`, `ManagedIdentityCredential`) are kombu's. What differs:

- Outages are connection errors. kombu leaves azure-core's `ServiceRequestError` (DNS, TCP, TLS),
  token failures and the SDK's AMQP errors out of `connection_errors`, so a publish skipped Celery's
  retry policy and a worker died with "Unrecoverable error" about 5 s after start
  (kombu 5.7, azure-servicebus 7.15). Here they are connection
  errors: a publish retries, then raises kombu's `OperationalError` (the API answers 503); a worker
  reconnects with backoff, as it does when Redis or RabbitMQ is away.
- Connecting is real. The SDK connects lazily, so `ensure_connection()` "succeeded" against any
  namespace; establishing a connection now asks the namespace for its properties (one HTTPS call
  per new connection; the API's pooled connections pay it once), so `/readyz` tells the truth.
- A requeue abandons. kombu's `_restore` does nothing, so a rejected-with-requeue message (worker
  lost, a retry that could not be published, prefetched messages at shutdown) came back only when
  its 5-minute lock ran out. Abandoning hands it out again at once; each delivery counts against
  the queue's max delivery count, after which Service Bus dead-letters it.
- The queue size is the backlog. kombu counts `total_message_count`, which includes dead-lettered
  and scheduled messages; a pile of dead letters would look like a backlog to the autoscaler.
- Celery's monitoring queues clean up after themselves. Flower's event receiver (`celeryev.<id>`)
  and remote-control replies (`<id>.reply.celery.pidbox`) are declared as real queues on this
  transport; they are created with auto-delete-on-idle, so a stopped Flower leaves nothing behind.
"""

from __future__ import annotations

import contextlib
import logging
from datetime import timedelta
from typing import Any

from azure.core import exceptions as azure_errors
from azure.servicebus import exceptions as servicebus_errors
from kombu.transport import azureservicebus as kombu_servicebus
from kombu.utils.objects import cached_property

logger = logging.getLogger(__name__)

# kombu's type stubs (celery-types) do not describe the transport's private API we extend.
_kombu: Any = kombu_servicebus

# "The namespace cannot be reached or refused us": retried like a lost Redis/RabbitMQ connection.
# Message-level errors (lock lost, already settled, message too large) are deliberately absent:
# retrying cannot fix them.
SERVICE_BUS_CONNECTION_ERRORS: tuple[type[Exception], ...] = (
    azure_errors.ServiceRequestError,  # DNS, TCP or TLS failure: no answer at all
    azure_errors.ServiceResponseError,  # the connection broke while waiting for the answer
    azure_errors.ClientAuthenticationError,  # SAS refused, or no token (managed identity not ready yet)
    servicebus_errors.ServiceBusConnectionError,
    servicebus_errors.ServiceBusCommunicationError,
    servicebus_errors.OperationTimeoutError,
    servicebus_errors.ServiceBusServerBusyError,
    servicebus_errors.ServiceBusAuthenticationError,
    servicebus_errors.ServiceBusAuthorizationError,
)
# Service Bus's minimum idle lifetime; Celery declares these queues with expiry hints that kombu's
# transport ignores, so the broker needs its own.
MONITOR_QUEUE_IDLE_LIFETIME = timedelta(minutes=5)
# One attempt per probe, bounded: kombu's ensure_connection owns the retrying and its timeout.
PROBE_TIMEOUT_SECONDS = 5


def is_monitor_queue(entity: str) -> bool:
    """Celery's event-receiver and remote-control queues (not the queues tasks travel on)."""
    return entity.startswith("celeryev.") or entity.endswith(".celery.pidbox")


class Channel(_kombu.Channel):
    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        # kombu turns this off because its _restore did nothing; ours abandons, so unacked
        # messages go back to the queue when a worker shuts down instead of waiting out their lock.
        self.qos.restore_at_shutdown = True

    def basic_cancel(self, consumer_tag: str) -> Any:
        # Celery cancels its consumer at shutdown after kombu may have closed the channel already;
        # kombu's method then fails on the missing connection (a traceback at every shutdown).
        if self.connection is None:
            return None
        return super().basic_cancel(consumer_tag)

    def _restore(self, message: Any) -> None:
        """Abandon: Service Bus redelivers now (delivery count + 1) instead of at lock expiry."""
        info = message.delivery_info
        azure_message, queue = info.get("azure_message"), info.get("azure_queue_name")
        if azure_message is None or queue is None:
            return  # received without a lock (no-ack consumer): nothing to give back
        try:
            self._get_asb_receiver(queue).receiver.abandon_message(azure_message)
        except (servicebus_errors.MessageAlreadySettled, servicebus_errors.MessageLockLostError):
            pass  # settled already, or the lock ran out and the broker redelivers it anyway
        except (azure_errors.AzureError, ValueError):
            # The message is still on the broker: failing to abandon it only delays it to lock
            # expiry. Raising would make kombu "emergency dump" a message that is not lost.
            logger.warning("could not abandon a message on %r; it comes back when its lock expires", queue)

    def _new_queue(self, queue: str, **kwargs: Any) -> Any:
        entity = self.entity_name(self.queue_name_prefix + queue)
        if not is_monitor_queue(entity) or entity in self._queue_cache:
            return super()._new_queue(queue, **kwargs)
        with contextlib.suppress(azure_errors.ResourceExistsError):
            self.queue_mgmt_service.create_queue(
                queue_name=entity,
                lock_duration=timedelta(seconds=self.peek_lock_seconds),
                auto_delete_on_idle=MONITOR_QUEUE_IDLE_LIFETIME,
            )
        return self._add_queue_to_cache(entity)

    def _size(self, queue: str) -> int:
        """Messages waiting to be processed: active ones, not the dead-letter sub-queue."""
        entity = self.entity_name(self.queue_name_prefix + queue)
        properties = self.queue_mgmt_service.get_queue_runtime_properties(entity)
        return int(properties.active_message_count or 0)

    @cached_property
    def queue_mgmt_service(self) -> Any:
        """kombu's administration client, with the transport's retry options (kombu passes none,
        and azure-core's default retries make one call to a dead namespace take minutes)."""
        options = {
            "retry_total": self.retry_total,
            "retry_backoff_factor": self.retry_backoff_factor,
            "retry_backoff_max": self.retry_backoff_max,
        }
        client_class = _kombu.ServiceBusAdministrationClient
        if self._connection_string:
            return client_class.from_connection_string(self._connection_string, **options)
        return client_class(self._namespace, self._credential, **options)

    def probe(self) -> None:
        """One cheap authenticated round trip to the namespace."""
        self.queue_mgmt_service.get_namespace_properties(
            retry_total=0, connection_timeout=PROBE_TIMEOUT_SECONDS, read_timeout=PROBE_TIMEOUT_SECONDS
        )


class Transport(_kombu.Transport):
    Channel = Channel
    # kombu's transport leaves these "N/A"; Flower and Celery's banner show them.
    driver_type = driver_name = "azureservicebus"
    connection_errors = (*_kombu.Transport.connection_errors, *SERVICE_BUS_CONNECTION_ERRORS)

    def establish_connection(self) -> Any:
        connection = super().establish_connection()
        channel = self._avail_channels[-1]
        try:
            channel.probe()
        except BaseException:
            # Not closing it alone: kombu would hand this dead channel out as the next one.
            self._avail_channels.remove(channel)
            channel.close()
            raise
        return connection
