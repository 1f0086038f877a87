"""An in-memory Azure Service Bus at the SDK boundary: the client classes kombu's transport calls.

Only the SDK classes are replaced (`ServiceBusClient` and `ServiceBusAdministrationClient`, where
kombu's `azureservicebus` transport and `azure.servicebus` expose them); kombu's transport, our
transport subclass, the real `ServiceBusMessage` and the real `AutoLockRenewer` all run unchanged.

What it models, because the code under test depends on it:
- peek-lock: a received message stays in the queue, locked until `locked_until_utc`; complete
  removes it; abandon or lock expiry makes it available again with `delivery_count` + 1;
- after `max_delivery_count` deliveries an abandoned or expired message moves to the dead-letter
  sub-queue with reason `MaxDeliveryCountExceeded`; `dead_letter_message` moves it there with the
  caller's reason; with `dead_lettering_on_message_expiration`, expired messages go there too;
- settlement rules of the SDK: settling twice raises `MessageAlreadySettled`, after the lock expired
  `MessageLockLostError`, on a closed receiver `ValueError`;
- the administration client: create (409 `ResourceExistsError` when present), get, update (the real
  `QueueProperties`), delete, runtime properties (active / dead-letter / total counts);
- the Standard tier's 256 KB message size limit (`MessageSizeExceededError`);
- an outage: `namespace.fail_with = ServiceRequestError(...)` makes every call raise it, and
  `namespace.refused` counts the calls it refused, by operation ("receive", "send", ...).
"""

from __future__ import annotations

import bisect
import itertools
import threading
import uuid
from collections import Counter
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from types import SimpleNamespace
from typing import Any

import isodate
import pytest
from azure.core.exceptions import ResourceExistsError, ResourceNotFoundError
from azure.servicebus import ServiceBusMessage, ServiceBusReceivedMessage, ServiceBusReceiveMode
from azure.servicebus.exceptions import (
    MessageAlreadySettled,
    MessageLockLostError,
    MessageSizeExceededError,
    MessagingEntityNotFoundError,
)
from azure.servicebus.management import QueueProperties

STANDARD_MAX_MESSAGE_BYTES = 256 * 1024
SAS_KEY = "k3y+with/base64=="  # Azure keys are base64: '+', '/' and '=' must survive the URL
_POLL_SLICE_SECONDS = 0.02
_NEVER = timedelta(days=36500)  # Service Bus's default TTL is TimeSpan.MaxValue: "never"
# The values Service Bus gives a queue created without them (what kombu's lazy declare gets).
SERVICE_DEFAULTS: dict[str, Any] = {
    "authorization_rules": None,
    "auto_delete_on_idle": timedelta(days=10675199),
    "dead_lettering_on_message_expiration": False,
    "default_message_time_to_live": timedelta(days=10675199),
    "duplicate_detection_history_time_window": timedelta(minutes=10),
    "availability_status": "Available",
    "enable_batched_operations": True,
    "enable_express": False,
    "enable_partitioning": False,
    "lock_duration": timedelta(seconds=60),
    "max_delivery_count": 10,
    "max_size_in_megabytes": 1024,
    "requires_duplicate_detection": False,
    "requires_session": False,
    "status": "Active",
    "forward_to": None,
    "user_metadata": None,
    "forward_dead_lettered_messages_to": None,
    "max_message_size_in_kilobytes": None,
}
_DURATIONS = {
    "auto_delete_on_idle",
    "default_message_time_to_live",
    "duplicate_detection_history_time_window",
    "lock_duration",
}


def _now() -> datetime:
    return datetime.now(UTC)


def _duration(value: Any) -> Any:
    if isinstance(value, str):
        return isodate.parse_duration(value)
    return value


# --- the broker's state ---------------------------------------------------------------------------


@dataclass(eq=False)  # identity: two messages with equal fields are still two messages
class StoredMessage:
    sequence_number: int
    body: bytes
    message_id: str
    enqueued_time_utc: datetime
    expires_at_utc: datetime | None
    application_properties: dict[Any, Any] | None = None
    content_type: str | None = None
    correlation_id: str | None = None
    subject: str | None = None
    delivery_count: int = 0
    lock_token: str | None = None
    locked_until_utc: datetime | None = None
    dead_letter_reason: str | None = None
    dead_letter_error_description: str | None = None
    dead_letter_source: str | None = None


@dataclass
class FakeQueue:
    name: str
    properties: dict[str, Any]
    active: list[StoredMessage] = field(default_factory=list)  # by sequence number, locked ones included
    dead_letter: list[StoredMessage] = field(default_factory=list)
    created_at: datetime = field(default_factory=_now)

    def messages(self, sub_queue: str | None) -> list[StoredMessage]:
        return self.dead_letter if sub_queue else self.active

    def as_properties(self) -> QueueProperties:
        return QueueProperties(self.name, **self.properties)


class FakeNamespace:
    """One Service Bus namespace: its queues, what clients asked of it, and failure injection."""

    def __init__(self, name: str) -> None:
        self.name = name
        self.queues: dict[str, FakeQueue] = {}
        self.cond = threading.Condition()
        self.admin_calls: list[tuple[str, str, dict[str, Any]]] = []
        self.credentials: list[Any] = []
        self.fail_with: BaseException | None = None
        self.refused: Counter[str] = Counter()  # calls refused during an outage, by operation
        self.max_message_bytes = STANDARD_MAX_MESSAGE_BYTES
        self.abandoned = 0
        self.renewed = 0
        self._sequence = itertools.count(1)

    # -- helpers used by the clients (call with self.cond held) --
    def check(self, operation: str = "other") -> None:
        if self.fail_with is not None:
            self.refused[operation] += 1
            raise self.fail_with

    def queue(self, name: str) -> FakeQueue:
        try:
            return self.queues[name]
        except KeyError:
            raise MessagingEntityNotFoundError(
                message=f"The messaging entity '{name}' could not be found."
            ) from None

    def enqueue(self, queue: FakeQueue, message: ServiceBusMessage) -> None:
        body = _body_bytes(message)
        if len(body) > self.max_message_bytes:
            raise MessageSizeExceededError(
                message=f"The message size {len(body)} exceeds the limit {self.max_message_bytes} bytes."
            )
        now = _now()
        ttl = message.time_to_live or queue.properties["default_message_time_to_live"]
        stored = StoredMessage(
            sequence_number=next(self._sequence),
            body=body,
            message_id=message.message_id or uuid.uuid4().hex,
            enqueued_time_utc=now,
            expires_at_utc=now + ttl if ttl and ttl < _NEVER else None,
            application_properties=dict(message.application_properties or {}) or None,
            content_type=message.content_type,
            correlation_id=message.correlation_id,
            subject=message.subject,
        )
        queue.active.append(stored)
        self.cond.notify_all()

    def sweep(self, queue: FakeQueue) -> None:
        """What the broker does with time: locks expire, messages outlive their TTL."""
        now = _now()
        for message in list(queue.active):
            if message.lock_token and message.locked_until_utc and message.locked_until_utc <= now:
                self.release(queue, message, abandoned=False)
            elif not message.lock_token and message.expires_at_utc and message.expires_at_utc <= now:
                queue.active.remove(message)
                if queue.properties["dead_lettering_on_message_expiration"]:
                    self.move_to_dead_letter(
                        queue, message, "TTLExpiredException", "The message expired and was dead lettered."
                    )
        for message in queue.dead_letter:
            if message.lock_token and message.locked_until_utc and message.locked_until_utc <= now:
                message.lock_token = None
                message.locked_until_utc = None

    def release(self, queue: FakeQueue, message: StoredMessage, *, abandoned: bool) -> None:
        """Abandon or lock expiry: available again, or dead-lettered after max delivery count."""
        message.lock_token = None
        message.locked_until_utc = None
        if abandoned:
            self.abandoned += 1
        max_deliveries = queue.properties["max_delivery_count"]
        if message in queue.active and message.delivery_count >= max_deliveries:
            queue.active.remove(message)
            self.move_to_dead_letter(
                queue,
                message,
                "MaxDeliveryCountExceeded",
                f"Message could not be consumed after {max_deliveries} delivery attempts.",
            )
        self.cond.notify_all()

    def move_to_dead_letter(
        self, queue: FakeQueue, message: StoredMessage, reason: str, description: str
    ) -> None:
        message.lock_token = None
        message.locked_until_utc = None
        message.dead_letter_reason = reason
        message.dead_letter_error_description = description
        message.dead_letter_source = queue.name
        bisect.insort(queue.dead_letter, message, key=lambda m: m.sequence_number)
        self.cond.notify_all()


class FakeServiceBus:
    """Every namespace the code under test talks to, by fully qualified name.

    Each installation has a namespace name of its own: kombu keeps connection pools in a
    process-wide registry keyed by URL, so a second test with the same URL would otherwise publish
    through the previous test's clients.
    """

    def __init__(self, name: str) -> None:
        self.name = name
        self.fqdn = f"{name}.servicebus.windows.net"
        self.sas_url = f"azureservicebus://RootManageSharedAccessKey:{SAS_KEY}@{name}"
        self.identity_url = f"azureservicebus://DefaultAzureCredential@{name}"
        self.namespaces: dict[str, FakeNamespace] = {}
        self._lock = threading.Lock()

    @property
    def default(self) -> FakeNamespace:
        """The namespace of `sas_url` and `identity_url`."""
        return self.namespace(self.fqdn)

    def namespace(self, name: str) -> FakeNamespace:
        if "." not in name:
            name = f"{name}.servicebus.windows.net"
        with self._lock:
            return self.namespaces.setdefault(name, FakeNamespace(name))

    def create_queue(self, queue: str, **properties: Any) -> FakeQueue:
        """Arrange a queue in the default namespace (as if provisioned), e.g. with a short lock."""
        ns = self.default
        with ns.cond:
            fake = FakeQueue(queue, _queue_properties(properties))
            ns.queues[queue] = fake
            return fake


def _queue_properties(given: dict[str, Any]) -> dict[str, Any]:
    properties = dict(SERVICE_DEFAULTS)
    for key, value in given.items():
        if key not in properties:
            raise TypeError(f"unexpected queue property {key!r}")
        properties[key] = _duration(value) if key in _DURATIONS else value
    return properties


def _body_bytes(message: ServiceBusMessage) -> bytes:
    body = message.body
    if isinstance(body, bytes):
        return body
    if isinstance(body, str):
        return body.encode()
    return b"".join(body)


def _parse_connection_string(conn_str: str) -> tuple[str, dict[str, str]]:
    parts = dict(part.split("=", 1) for part in conn_str.split(";") if part)
    endpoint = parts["Endpoint"]
    return endpoint.split("//", 1)[-1].rstrip("/"), parts


# --- received messages ------------------------------------------------------------------------------


class FakeReceivedMessage(ServiceBusReceivedMessage):
    """A received message: a real `ServiceBusReceivedMessage` subclass (the SDK's AutoLockRenewer
    checks the type), carrying a snapshot of the stored message instead of an AMQP frame."""

    def __init__(self, stored: StoredMessage, receiver: FakeReceiver, *, settled: bool) -> None:
        # No super().__init__(): there is no AMQP message behind this one.
        self._stored = stored
        self._receiver = receiver
        self._settled = settled
        self._lock_token = stored.lock_token
        self._locked_until = stored.locked_until_utc
        self._delivery_count = stored.delivery_count
        self._received_timestamp_utc = _now()
        self._is_deferred_message = False
        self._is_peeked_message = False
        self.auto_renew_error: Any = None

    def __repr__(self) -> str:
        return f"<FakeReceivedMessage seq={self.sequence_number} delivery={self.delivery_count}>"

    def __str__(self) -> str:
        return self.body.decode(errors="replace")

    @property
    def _lock_expired(self) -> bool:  # type: ignore[override]
        return self._locked_until is not None and self._locked_until <= _now()

    @property
    def body(self) -> bytes:  # type: ignore[override]
        return self._stored.body

    @property
    def message_id(self) -> str:  # type: ignore[override]
        return self._stored.message_id

    @property
    def application_properties(self) -> dict[Any, Any] | None:  # type: ignore[override]
        return self._stored.application_properties

    @property
    def content_type(self) -> str | None:  # type: ignore[override]
        return self._stored.content_type

    @property
    def correlation_id(self) -> str | None:  # type: ignore[override]
        return self._stored.correlation_id

    @property
    def subject(self) -> str | None:  # type: ignore[override]
        return self._stored.subject

    @property
    def delivery_count(self) -> int:  # type: ignore[override]
        return self._delivery_count

    @property
    def sequence_number(self) -> int:  # type: ignore[override]
        return self._stored.sequence_number

    @property
    def enqueued_time_utc(self) -> datetime:  # type: ignore[override]
        return self._stored.enqueued_time_utc

    @property
    def expires_at_utc(self) -> datetime | None:  # type: ignore[override]
        return self._stored.expires_at_utc

    @property
    def locked_until_utc(self) -> datetime | None:  # type: ignore[override]
        return self._locked_until

    @property
    def lock_token(self) -> str | None:  # type: ignore[override]
        return self._lock_token

    @property
    def dead_letter_reason(self) -> str | None:  # type: ignore[override]
        return self._stored.dead_letter_reason

    @property
    def dead_letter_error_description(self) -> str | None:  # type: ignore[override]
        return self._stored.dead_letter_error_description

    @property
    def dead_letter_source(self) -> str | None:  # type: ignore[override]
        return self._stored.dead_letter_source


# --- the SDK's client classes ----------------------------------------------------------------------


class FakeSender:
    def __init__(self, namespace: FakeNamespace, queue_name: str) -> None:
        self._ns = namespace
        self.queue_name = queue_name
        self._running = True

    def send_messages(self, message: ServiceBusMessage | Iterable[ServiceBusMessage], **kwargs: Any) -> None:
        if not self._running:
            raise ValueError("The handler has already been shutdown.")
        messages = [message] if isinstance(message, ServiceBusMessage) else list(message)
        with self._ns.cond:
            self._ns.check("send")
            queue = self._ns.queue(self.queue_name)
            for item in messages:
                self._ns.enqueue(queue, item)

    def close(self) -> None:
        self._running = False

    def __enter__(self) -> FakeSender:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


class FakeReceiver:
    def __init__(
        self,
        namespace: FakeNamespace,
        queue_name: str,
        *,
        sub_queue: Any = None,
        receive_mode: ServiceBusReceiveMode = ServiceBusReceiveMode.PEEK_LOCK,
        max_wait_time: float | None = None,
        prefetch_count: int = 0,
    ) -> None:
        self._ns = namespace
        self.queue_name = queue_name
        self.sub_queue = (
            str(sub_queue.value if hasattr(sub_queue, "value") else sub_queue) if sub_queue else None
        )
        self._receive_mode = receive_mode
        self._max_wait_time = max_wait_time
        self.prefetch_count = prefetch_count
        self._running = False
        self._closed = False
        self.session = None

    # kombu opens its lock-renewal receiver explicitly with this private method of the SDK.
    def _open_with_retry(self, operation: str = "open_receiver") -> None:
        with self._ns.cond:
            self._ns.check(operation)
        if self._closed:
            raise ValueError("The handler has already been shutdown.")
        self._running = True

    def __enter__(self) -> FakeReceiver:
        self._open_with_retry()
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def close(self) -> None:
        self._running = False
        self._closed = True

    def receive_messages(
        self, max_message_count: int | None = 1, max_wait_time: float | None = None
    ) -> list[FakeReceivedMessage]:
        self._open_with_retry("receive")
        wait = max_wait_time if max_wait_time is not None else self._max_wait_time
        deadline = _now() + timedelta(seconds=wait or 0)
        limit = max_message_count or 1
        ns = self._ns
        with ns.cond:
            while True:
                ns.check("receive")
                queue = ns.queue(self.queue_name)
                ns.sweep(queue)
                available = [m for m in queue.messages(self.sub_queue) if not m.lock_token][:limit]
                if available:
                    return [self._deliver(queue, stored) for stored in available]
                remaining = (deadline - _now()).total_seconds()
                if remaining <= 0 or self._closed:
                    return []
                ns.cond.wait(min(remaining, _POLL_SLICE_SECONDS))

    def _deliver(self, queue: FakeQueue, stored: StoredMessage) -> FakeReceivedMessage:
        if self._receive_mode == ServiceBusReceiveMode.RECEIVE_AND_DELETE:
            queue.messages(self.sub_queue).remove(stored)
            return FakeReceivedMessage(stored, self, settled=True)
        if not self.sub_queue:
            stored.delivery_count += 1
        stored.lock_token = str(uuid.uuid4())
        stored.locked_until_utc = _now() + queue.properties["lock_duration"]
        return FakeReceivedMessage(stored, self, settled=False)

    # -- settlement --
    def _locked(self, message: FakeReceivedMessage, action: str) -> tuple[FakeQueue, StoredMessage]:
        if not isinstance(message, ServiceBusReceivedMessage):
            raise TypeError("Parameter 'message' must be of type ServiceBusReceivedMessage")
        if self._receive_mode == ServiceBusReceiveMode.RECEIVE_AND_DELETE:
            raise ValueError(f"The operation {action} is not supported in 'RECEIVE_AND_DELETE' receive mode.")
        if message._settled:
            raise MessageAlreadySettled(action=action)
        if not self._running:
            raise ValueError(f"Failed to {action} the message as the handler has already been shutdown.")
        self._ns.check()
        queue = self._ns.queue(self.queue_name)
        self._ns.sweep(queue)
        stored = message._stored
        if message._lock_expired or stored.lock_token != message.lock_token:
            raise MessageLockLostError(message="The lock on the message lock has expired.")
        return queue, stored

    def complete_message(self, message: FakeReceivedMessage) -> None:
        with self._ns.cond:
            queue, stored = self._locked(message, "complete")
            queue.messages(self.sub_queue).remove(stored)
            message._settled = True
            self._ns.cond.notify_all()

    def abandon_message(self, message: FakeReceivedMessage) -> None:
        with self._ns.cond:
            queue, stored = self._locked(message, "abandon")
            message._settled = True
            if self.sub_queue:
                stored.lock_token = None
                stored.locked_until_utc = None
                self._ns.abandoned += 1
                self._ns.cond.notify_all()
            else:
                self._ns.release(queue, stored, abandoned=True)

    def dead_letter_message(
        self, message: FakeReceivedMessage, reason: str | None = None, error_description: str | None = None
    ) -> None:
        with self._ns.cond:
            if self.sub_queue:
                raise ValueError("Messages of the dead-letter sub-queue cannot be dead-lettered again.")
            queue, stored = self._locked(message, "dead-letter")
            queue.active.remove(stored)
            message._settled = True
            self._ns.move_to_dead_letter(queue, stored, reason or "", error_description or "")

    def renew_message_lock(self, message: FakeReceivedMessage, **kwargs: Any) -> datetime:
        with self._ns.cond:
            queue, stored = self._locked(message, "renew")
            stored.locked_until_utc = _now() + queue.properties["lock_duration"]
            message._locked_until = stored.locked_until_utc
            self._ns.renewed += 1
            return stored.locked_until_utc


class FakeServiceBusClient:
    """`azure.servicebus.ServiceBusClient`: senders and receivers of one namespace."""

    cloud: FakeServiceBus | None = None  # set by `install`

    def __init__(self, fully_qualified_namespace: str, credential: Any, **kwargs: Any) -> None:
        assert self.cloud is not None, "install the fake first"
        self._ns = self.cloud.namespace(fully_qualified_namespace)
        self.credential = credential
        self.options = kwargs
        with self._ns.cond:
            self._ns.credentials.append(credential)

    @classmethod
    def from_connection_string(cls, conn_str: str, **kwargs: Any) -> FakeServiceBusClient:
        namespace, parts = _parse_connection_string(conn_str)
        credential = SimpleNamespace(policy=parts["SharedAccessKeyName"], key=parts["SharedAccessKey"])
        return cls(namespace, credential, **kwargs)

    def get_queue_sender(self, queue_name: str, **kwargs: Any) -> FakeSender:
        return FakeSender(self._ns, queue_name)

    def get_queue_receiver(
        self,
        queue_name: str,
        *,
        sub_queue: Any = None,
        receive_mode: ServiceBusReceiveMode = ServiceBusReceiveMode.PEEK_LOCK,
        max_wait_time: float | None = None,
        prefetch_count: int = 0,
        **kwargs: Any,
    ) -> FakeReceiver:
        return FakeReceiver(
            self._ns,
            queue_name,
            sub_queue=sub_queue,
            receive_mode=receive_mode,
            max_wait_time=max_wait_time,
            prefetch_count=prefetch_count,
        )

    def close(self) -> None:
        pass

    def __enter__(self) -> FakeServiceBusClient:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


class FakeAdministrationClient:
    """`azure.servicebus.management.ServiceBusAdministrationClient` for queues."""

    cloud: FakeServiceBus | None = None  # set by `install`

    def __init__(self, fully_qualified_namespace: str, credential: Any, **kwargs: Any) -> None:
        assert self.cloud is not None, "install the fake first"
        self._ns = self.cloud.namespace(fully_qualified_namespace)
        self.credential = credential
        self.options = kwargs
        with self._ns.cond:
            self._ns.credentials.append(credential)

    @classmethod
    def from_connection_string(cls, conn_str: str, **kwargs: Any) -> FakeAdministrationClient:
        namespace, parts = _parse_connection_string(conn_str)
        credential = SimpleNamespace(policy=parts["SharedAccessKeyName"], key=parts["SharedAccessKey"])
        return cls(namespace, credential, **kwargs)

    def _call(self, operation: str, queue_name: str, arguments: dict[str, Any]) -> None:
        self._ns.check(operation)
        self._ns.admin_calls.append((operation, queue_name, arguments))

    def create_queue(self, queue_name: str, **kwargs: Any) -> QueueProperties:
        with self._ns.cond:
            self._call("create_queue", queue_name, dict(kwargs))
            if queue_name in self._ns.queues:
                raise ResourceExistsError(f"Queue '{queue_name}' already exists")
            queue = FakeQueue(queue_name, _queue_properties(kwargs))
            self._ns.queues[queue_name] = queue
            return queue.as_properties()

    def get_queue(self, queue_name: str, **kwargs: Any) -> QueueProperties:
        with self._ns.cond:
            self._call("get_queue", queue_name, {})
            queue = self._ns.queues.get(queue_name)
            if queue is None:
                raise ResourceNotFoundError(f"Queue '{queue_name}' does not exist")
            return queue.as_properties()

    def update_queue(self, queue: QueueProperties | dict[str, Any], **kwargs: Any) -> None:
        values = dict(queue) if isinstance(queue, dict) else {k: getattr(queue, k) for k in SERVICE_DEFAULTS}
        name = queue["name"] if isinstance(queue, dict) else queue.name
        values.pop("name", None)
        values.update(kwargs)
        with self._ns.cond:
            self._call("update_queue", name, values)
            existing = self._ns.queues.get(name)
            if existing is None:
                raise ResourceNotFoundError(f"Queue '{name}' does not exist")
            existing.properties = _queue_properties(values)

    def delete_queue(self, queue_name: str, **kwargs: Any) -> None:
        with self._ns.cond:
            self._call("delete_queue", queue_name, {})
            if self._ns.queues.pop(queue_name, None) is None:
                raise ResourceNotFoundError(f"Queue '{queue_name}' does not exist")

    def list_queues(self, **kwargs: Any) -> Iterator[QueueProperties]:
        with self._ns.cond:
            self._call("list_queues", "", {})
            queues = [queue.as_properties() for queue in self._ns.queues.values()]
        return iter(queues)

    def get_queue_runtime_properties(self, queue_name: str, **kwargs: Any) -> SimpleNamespace:
        with self._ns.cond:
            self._call("get_queue_runtime_properties", queue_name, {})
            queue = self._ns.queues.get(queue_name)
            if queue is None:
                raise ResourceNotFoundError(f"Queue {queue_name} does not exist")
            self._ns.sweep(queue)
            active, dead = len(queue.active), len(queue.dead_letter)
            return SimpleNamespace(
                name=queue_name,
                active_message_count=active,
                dead_letter_message_count=dead,
                scheduled_message_count=0,
                transfer_message_count=0,
                transfer_dead_letter_message_count=0,
                total_message_count=active + dead,
                size_in_bytes=sum(len(m.body) for m in queue.active + queue.dead_letter),
                created_at_utc=queue.created_at,
            )

    def get_namespace_properties(self, **kwargs: Any) -> SimpleNamespace:
        with self._ns.cond:
            self._call("get_namespace_properties", "", {})
            return SimpleNamespace(name=self._ns.name.split(".")[0], messaging_sku="Standard")

    def close(self) -> None:
        pass

    def __enter__(self) -> FakeAdministrationClient:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


# --- installing it ------------------------------------------------------------------------------------


def install(monkeypatch: pytest.MonkeyPatch) -> FakeServiceBus:
    """Replace the SDK's client classes wherever kombu and our code look them up."""
    import azure.servicebus
    import azure.servicebus.management
    import kombu.transport.azureservicebus as kombu_asb

    cloud = FakeServiceBus(f"cloudscale-test-{uuid.uuid4().hex[:8]}")
    monkeypatch.setattr(FakeServiceBusClient, "cloud", cloud)
    monkeypatch.setattr(FakeAdministrationClient, "cloud", cloud)
    for module in (kombu_asb, azure.servicebus):
        monkeypatch.setattr(module, "ServiceBusClient", FakeServiceBusClient)
    for module in (kombu_asb, azure.servicebus.management):
        monkeypatch.setattr(module, "ServiceBusAdministrationClient", FakeAdministrationClient)
    return cloud


def install_process_wide() -> FakeServiceBus:
    """For a child process started by a test (see `servicebus_run`): patch for the process's life."""
    patcher = pytest.MonkeyPatch()
    return install(patcher)


# --- a Celery app on the fake, configured by the real settings module --------------------------------


def servicebus_settings(monkeypatch: pytest.MonkeyPatch, url: str) -> dict[str, Any]:
    """What cloudscale_project/settings.py computes with CLOUDSCALE_BROKER_URL=url (re-read for real)."""
    import runpy
    from pathlib import Path

    monkeypatch.setenv("CLOUDSCALE_BROKER_URL", url)
    path = Path(__file__).resolve().parents[2] / "cloudscale_project" / "settings.py"
    return runpy.run_path(str(path))


def servicebus_app(values: dict[str, Any], *, name: str = "servicebus-test", **transport_options: Any) -> Any:
    """A separate Celery app with the CELERY_* settings of `values` (as cloudscale_project/celery.py
    configures its app), so tests never change the suite's own app and broker."""
    from celery import Celery

    app = Celery(name, set_as_current=False)
    config = {key: value for key, value in values.items() if key.startswith("CELERY_")}
    config["CELERY_BROKER_TRANSPORT_OPTIONS"] = {
        **config["CELERY_BROKER_TRANSPORT_OPTIONS"],
        **transport_options,
    }
    app.config_from_object(SimpleNamespace(**config), namespace="CELERY")
    app.autodiscover_tasks()  # the project's tasks (events.process_batch, …), as its own app does
    return app
