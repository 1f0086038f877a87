"""Big batch bodies that the worker's main process leaves undecoded for the pool process.

Celery decodes every task body twice: once in the worker's main process, which reads the
arguments only to build its request object (protocol 2 keeps everything the main process needs in
the headers), and again in the pool process that runs the task. For 500-event batches leaving the
main process's copy out took its CPU per event to 0.70 of what it was, about 3 % of the worker's
(docs/benchmarks.md, "Levers, sixteenth round").

For an `events.process_batch` message whose body is big, JSON and looks like protocol 2's
`[args, kwargs, embed]`, the consumer fills kombu's memo of the decoded body (`Message.payload`,
memoized in `_decoded_cache`) with `BodyLeftToPool`, an empty body of the same shape. Celery's
strategy and request take it as a protocol-2 body they need not look into, and hand the raw bytes to
the pool process, which decodes them as it always does. A body that then turns out not to decode,
or not to be `[args, kwargs, embed]`, fails in the pool process before the task runs; the batch's
request (events/tasks.py, `BatchRequest.on_failure`) dead-letters it byte-exact from the main
process's copy, as the consumer does with a body it decoded itself (events/consumer.py).

Small messages are still decoded in the main process: the coalescer needs their events
(events/coalescing.py), and for them the decode costs little. A big body's event count, which the
coalescer needs to size its jobs, comes from the message's `cloudscale_events` header instead.
"""

from __future__ import annotations

from typing import Any, cast

from kombu.message import Message
from kombu.serialization import loads

from cloudscale_project.serialization import ORJSON_CONTENT_TYPE
from events.publishing import TASK_NAME

# A body at least this big is left to the pool process: about 60 enriched events. The messages of
# single events after the API's group commit are far smaller.
LEFT_TO_POOL_MIN_BYTES = 32 * 1024
_JSON_CONTENT_TYPES = frozenset({ORJSON_CONTENT_TYPE, "application/json"})


class BodyLeftToPool(tuple[tuple[()], dict[str, Any], dict[str, Any]]):
    """What the main process sees of a body it did not decode: protocol 2's `[args, kwargs, embed]`
    with nothing in them. Celery's request then has no arguments in the main process, which reads
    only its headers; the pool process decodes the real ones."""

    def __new__(cls) -> BodyLeftToPool:
        return super().__new__(cls, ((), {}, {}))


def leave_body_to_pool(message: Message) -> bool:
    """Mark a big batch body as decoded only by the pool process; False leaves the message as it came."""
    headers = message.headers
    body = message.body
    if not (
        isinstance(headers, dict)
        and headers.get("task") == TASK_NAME
        and headers.get("id")
        and message.content_type in _JSON_CONTENT_TYPES
        and isinstance(body, (bytes, str))  # bytes from Redis; text from RabbitMQ (kombu's pyamqp)
        and len(body) >= LEFT_TO_POOL_MIN_BYTES
        and body[:1] in (b"[", "[")  # protocol 2's list; a protocol-1 or hybrid body is an object
    ):
        return False
    message._decoded_cache = BodyLeftToPool()  # type: ignore[attr-defined]  # kombu's memo of `payload` (kombu/message.py)
    return True


def body_left_to_pool(message: Any) -> bool:
    return isinstance(getattr(message, "_decoded_cache", None), BodyLeftToPool)


def decoded_payload(message: Message) -> Any:
    """The message's decoded body, decoding it here if it was left to the pool process."""
    if body_left_to_pool(message):
        content_type, encoding = cast(str, message.content_type), cast(str, message.content_encoding)
        return loads(cast(bytes | str, message.body), content_type, encoding, accept=message.accept)
    return message.payload
