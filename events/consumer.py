"""The worker's Celery consumer, changed in three ways, all in the worker's main process:

- A message Celery cannot turn into a task call becomes a `DeserializationFailed` dead letter
  instead of being logged and dropped. Celery's stock `Consumer` acks or rejects (without requeue)
  bodies that do not decode, have a content type we do not accept, name an unknown task or are not
  task messages at all; on most brokers that deletes them. We keep each one byte-exact first, then
  ack it.
- A big batch body is left undecoded for the pool process (events/message_bodies.py).
- Small batch messages that wait for a pool process go to it together (events/coalescing.py).

Wired in by `CELERY_WORKER_CONSUMER` in settings.py.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Callable, Sequence
from typing import Any

from celery.worker.consumer import Consumer
from django import db
from kombu.message import Message
from vine import promise

from events.coalescing import Coalescer
from events.deadletters import DeadLetterInput, deadletter_record_many
from events.message_bodies import decoded_payload, leave_body_to_pool
from events.models import DeadLetter

logger = logging.getLogger(__name__)

_V2_BODY_LENGTH = 3  # protocol 2 bodies are [args, kwargs, embed]
# Dead-letter errors, the same whichever process found the body bad (see events/tasks.py too).
NOT_A_TASK_BODY = "task body is not [args, kwargs, embed]"


def undecodable_body(exc: Exception) -> str:
    return f"message body could not be decoded: {type(exc).__name__}: {exc}"


class DeadLetteringConsumer(Consumer):
    connection_errors: tuple[type[BaseException], ...]  # set by Consumer.__init__
    controller: Any  # the WorkController, set by Consumer.__init__
    qos: Any  # kombu's QoS of the task channel, set when the consumer starts
    on_task_request: Callable[[Any], Any]

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        # Small batch messages that wait for a pool process go to it together (events/coalescing.py).
        self.coalescer = Coalescer(
            controller=self.controller,
            fallback=self.on_task_request,
            timer=getattr(self, "timer", None),
            qos=lambda: getattr(self, "qos", None),
        )
        self.on_task_request = self.coalescer

    def on_close(self) -> None:
        """A lost connection: the coalescer's held messages go with Celery's own reserved ones."""
        self.coalescer.forget()
        super().on_close()

    def on_decode_error(self, message: Message, exc: Exception) -> None:
        self._dead_letter(message, undecodable_body(exc))

    def on_unknown_message(self, body: Any, message: Message) -> None:
        self._dead_letter(message, "not a Celery task message (no task name)")

    def on_unknown_task(self, body: Any, message: Message, exc: Exception) -> None:
        name = (message.headers or {}).get("task") or "?"
        self._dead_letter(message, f"unknown task {name!r}")

    def on_invalid_task(self, body: Any, message: Message, exc: Exception) -> None:
        self._dead_letter(message, f"invalid task message: {type(exc).__name__}: {exc}")

    def create_task_handler(self, promise: type[promise] = promise) -> Callable[[Message], Any]:
        handler = super().create_task_handler(promise)

        def on_task_received(message: Message) -> Any:
            # Celery checks some malformations only later: a protocol-2 body of the wrong shape
            # fails inside the pool and its message is acked away, and a missing `id` header
            # raises out of the consumer. Catch both here, while the message is still ours.
            try:
                if leave_body_to_pool(message):  # a big batch: the pool process decodes and checks it
                    return handler(message)
                problem = _protocol_problem(message)
                if problem:
                    return self._dead_letter(message, problem)
                return handler(message)
            except Exception as exc:
                if message.acknowledged:
                    raise
                logger.exception("message could not be turned into a task")
                return self._dead_letter(message, f"malformed task message: {type(exc).__name__}: {exc}")

        return on_task_received

    def _dead_letter(self, message: Message, error: str) -> None:
        dead_letter_message(message, error, connection_errors=self.connection_errors)


def dead_letter_message(
    message: Message, error: str, *, connection_errors: Sequence[type[BaseException]]
) -> None:
    """Keep the message byte-exact, then ack it. If it cannot be kept, leave it unacked."""
    headers = _json_safe(message.headers or {})
    correlation_id = headers.get("correlation_id") or message.properties.get("correlation_id") or ""
    letter = DeadLetterInput(
        reason=DeadLetter.Reason.DESERIALIZATION_FAILED,
        kind=DeadLetter.Kind.RAW,
        tenant=_tenant_of(message),
        payload=_raw_body(message),
        error=error[:2000],
        content_type=message.content_type or "",
        content_encoding=message.content_encoding or "",
        headers=headers,
        correlation_id=str(correlation_id)[:64],
    )
    try:
        db.close_old_connections()
        deadletter_record_many(letters=[letter])
    except Exception:
        # Not acked: Redis hands it out again after the visibility timeout, AMQP and Service
        # Bus after the connection or lock ends. Dropping it would lose it; a requeue now would
        # spin while the database is down.
        logger.exception("could not dead-letter an undecodable message; leaving it unacked")
        return
    finally:
        db.close_old_connections()
    logger.error("undecodable message dead-lettered: %s", error)
    message.ack_log_error(logger, tuple(connection_errors))


def _protocol_problem(message: Message) -> str | None:
    headers = message.headers
    if not isinstance(headers, dict) or "task" not in headers:
        return None  # protocol 1 or not a task message: Celery's own checks handle these
    if not headers.get("id"):
        return "task message without an id header"
    try:
        payload = message.payload
    except Exception:
        return None  # undecodable or disallowed content: Celery's handler reports it precisely
    if _is_v2_body(payload) or (isinstance(payload, dict) and "args" in payload):
        return None  # a dict with args is a hybrid protocol-1 body; Celery validates it itself
    return NOT_A_TASK_BODY


def _is_v2_body(payload: Any) -> bool:
    if not isinstance(payload, list | tuple) or len(payload) != _V2_BODY_LENGTH:
        return False
    args, kwargs, embed = payload
    return isinstance(args, list | tuple) and isinstance(kwargs, dict) and isinstance(embed, dict | None)


def _raw_body(message: Message) -> bytes:
    body = message.body
    if isinstance(body, bytes):
        return body
    if isinstance(body, str):
        return body.encode("utf-8", errors="surrogateescape")
    return json.dumps(body, default=str).encode()


def _tenant_of(message: Message) -> str:
    """The tenant slug, if the body decodes to a process_batch-like payload naming one."""
    try:
        payload = decoded_payload(message)
    except Exception:
        return ""
    kwargs: Any = None
    if isinstance(payload, list | tuple) and len(payload) == _V2_BODY_LENGTH:
        kwargs = payload[1]
    elif isinstance(payload, dict):
        kwargs = payload.get("kwargs", payload)
    tenant = kwargs.get("tenant") if isinstance(kwargs, dict) else None
    return tenant[:64] if isinstance(tenant, str) else ""


def _json_safe(headers: dict[str, Any]) -> dict[str, Any]:
    safe: dict[str, Any] = json.loads(json.dumps(headers, default=str))
    return safe
