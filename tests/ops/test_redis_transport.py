"""The Redis broker transport consumes atomically: a message is in the queue or in the unacked set at
every instant, so a server that dies while handing it out cannot lose it.

"Redis applied the pop but the reply never reached the consumer" is reproduced exactly with a proxy
between the consumer and the run's embedded server: it forwards everything, but closes both sides
instead of forwarding the first reply that carries the message. kombu's stock transport (BRPOP,
then a second round trip to record the message as unacked) loses that message; ours records it in
the same server-side step as the pop, and the visibility-timeout sweep hands it out again.
"""

from __future__ import annotations

import base64
import contextlib
import json
import socket
import threading
import time
import uuid
from collections.abc import Iterator
from datetime import UTC, datetime
from decimal import Decimal
from typing import Any

import pytest
import redis
from django.conf import settings
from kombu import Connection, Consumer, Exchange, Message, Producer, Queue
from kombu.utils.json import dumps as kombu_dumps
from kombu.utils.json import loads as kombu_loads

from cloudscale_project.celery import app
from cloudscale_project.publish_receipts import PUBLISHED_KEY_PREFIX, PUBLISHED_TTL_SECONDS, published_key
from ops.redis_transport import ENVELOPE_HEAD_LUA, UNDECODABLE_KEY, Transport, queue_entry
from tests.netutil import TcpProxy

pytestmark = [pytest.mark.core]

# A database of the embedded server no other test uses, so the sweep sees only this test's messages.
SCRATCH_DB = 7
VISIBILITY_TIMEOUT_SECONDS = 1


class ReplyCuttingProxy(TcpProxy):
    """TCP proxy to a Redis server that "kills the server" right after it answered with `marker`:
    the reply is swallowed and both connections are closed."""

    def __init__(self, *, upstream_port: int, marker: bytes) -> None:
        self.marker = marker
        self.cut = threading.Event()
        super().__init__(upstream_port=upstream_port)

    def connected(self, client: socket.socket, server: socket.socket) -> None:
        threading.Thread(target=self._pump, args=(client, server, False), daemon=True).start()
        threading.Thread(target=self._pump, args=(server, client, True), daemon=True).start()

    def _pump(self, source: socket.socket, target: socket.socket, replies: bool) -> None:
        tail = b""
        while True:
            try:
                chunk = source.recv(65536)
            except OSError:
                return
            if not chunk:
                break
            if replies and not self.cut.is_set() and self.marker in tail + chunk:
                self.cut.set()
                break  # the reply is never forwarded
            tail = chunk[-len(self.marker) :]
            try:
                target.sendall(chunk)
            except OSError:
                return
        for sock in (source, target):
            with contextlib.suppress(OSError):
                sock.shutdown(socket.SHUT_RDWR)
            sock.close()


def _url(port: int) -> str:
    return f"redis://:{settings.EMBEDDED_REDIS_PASSWORD}@127.0.0.1:{port}/{SCRATCH_DB}"


@pytest.fixture
def scratch() -> Iterator[redis.Redis]:
    if settings.BROKER_SCHEME != "redis":
        pytest.skip("the Redis transport is only used with a redis:// broker")
    client = redis.Redis.from_url(_url(settings.EMBEDDED_REDIS_PORT))
    client.flushdb()
    yield client
    client.flushdb()


def _queue() -> Queue:
    name = f"atomic-{uuid.uuid4().hex[:8]}"
    return Queue(name, Exchange(name, type="direct"), routing_key=name)


def _publish(queue: Queue, body: dict[str, Any], **headers: Any) -> None:
    with Connection(_url(settings.EMBEDDED_REDIS_PORT)) as conn:
        Producer(conn.channel()).publish(
            body, exchange=queue.exchange, routing_key=queue.routing_key, declare=[queue], headers=headers
        )


def _receive(url: str, queue: Queue, *, timeout: float, ack: bool = True) -> list[Message]:
    """Consume with the configured transport until one message arrives or `timeout` passes."""
    options = {
        "visibility_timeout": VISIBILITY_TIMEOUT_SECONDS,
        "unacked_restore_throttle": 1,
        "unacked_mutex_expire": 5,
    }
    received: list[Message] = []
    with Connection(url, transport_options=options) as conn:
        consumer = Consumer(conn, queues=[queue], on_message=received.append, prefetch_count=1)
        with consumer:
            deadline = time.monotonic() + timeout
            while not received and time.monotonic() < deadline:
                with contextlib.suppress(socket.timeout, TimeoutError):
                    conn.drain_events(timeout=0.5)
        for message in received if ack else ():
            message.ack()
    return received


def test_it_redelivers_a_message_whose_pop_reply_was_lost_with_the_server(scratch: redis.Redis) -> None:
    queue = _queue()
    marker = f"cut-{uuid.uuid4().hex}"
    _publish(queue, {"event": "kept"}, marker=marker)
    proxy = ReplyCuttingProxy(upstream_port=settings.EMBEDDED_REDIS_PORT, marker=marker.encode())
    try:
        with contextlib.suppress(Exception):  # the consumer sees its connection die, as in a crash
            _receive(_url(proxy.port), queue, timeout=5)
        assert proxy.cut.is_set(), "the server answered with the message and the answer was cut"
    finally:
        proxy.close()

    # Redis applied the pop. The message is not in the queue any more: it must be unacked, so
    # that the visibility-timeout sweep can hand it out again.
    assert scratch.llen(queue.name) == 0
    assert scratch.hlen("unacked") == 1, "the popped message was recorded in the same step as the pop"

    redelivered = _receive(_url(settings.EMBEDDED_REDIS_PORT), queue, timeout=VISIBILITY_TIMEOUT_SECONDS + 10)
    assert [m.decode() for m in redelivered] == [{"event": "kept"}]
    assert redelivered[0].headers["marker"] == marker
    assert redelivered[0].delivery_info.get("redelivered") is True
    assert scratch.hlen("unacked") == 0, "acked once delivered again"


def test_it_keeps_a_message_unacked_until_it_is_acked_and_puts_a_rejected_one_back(
    scratch: redis.Redis,
) -> None:
    queue = _queue()
    _publish(queue, {"n": 1})
    with Connection(_url(settings.EMBEDDED_REDIS_PORT)) as conn:
        # kombu-stubs types channel() as the bare StdChannel, without basic_get.
        channel: Any = conn.channel()
        first = channel.basic_get(queue.name)
        assert first is not None and first.decode() == {"n": 1}
        assert scratch.hlen("unacked") == 1 and scratch.zcard("unacked_index") == 1
        assert scratch.llen(queue.name) == 0
        assert channel.basic_get(queue.name) is None, "an unacked message is not handed out twice"

        _publish(queue, {"n": 2})
        second = channel.basic_get(queue.name)
        assert second is not None and second.decode() == {"n": 2}
        assert scratch.hlen("unacked") == 2
        second.reject(requeue=True)
        assert scratch.llen(queue.name) == 1 and scratch.hlen("unacked") == 1
        again = channel.basic_get(queue.name)
        assert again is not None and again.decode() == {"n": 2}
        assert again.delivery_info.get("redelivered") is True
        again.ack()
        first.ack()
        assert scratch.hlen("unacked") == 0 and scratch.zcard("unacked_index") == 0


def test_a_message_got_without_ack_is_not_delivered_again(scratch: redis.Redis) -> None:
    queue = _queue()
    _publish(queue, {"n": 1})
    # A visibility timeout of 0: the sweep below restores every unacked entry there is.
    with Connection(_url(settings.EMBEDDED_REDIS_PORT), transport_options={"visibility_timeout": 0}) as conn:
        channel: Any = conn.channel()
        taken = channel.basic_get(queue.name, no_ack=True)
        assert taken is not None and taken.decode() == {"n": 1}
        unacked = scratch.hlen("unacked"), scratch.zcard("unacked_index")
        # What the visibility sweep would put back in the queue: nothing.
        channel.qos.restore_visible(start=0, num=100, interval=0)
        assert scratch.llen(queue.name) == 0, "a message taken for good came back"
        assert unacked == (0, 0)
        assert channel.basic_get(queue.name, no_ack=True) is None


def test_it_wakes_a_waiting_consumer_as_soon_as_a_message_is_published(scratch: redis.Redis) -> None:
    queue = _queue()
    _publish(queue, {"warm": "up"})  # declares the queue
    assert _receive(_url(settings.EMBEDDED_REDIS_PORT), queue, timeout=5)
    published_at: list[float] = []

    def publish_later() -> None:
        time.sleep(1.5)
        published_at.append(time.monotonic())
        _publish(queue, {"late": True})

    threading.Thread(target=publish_later, daemon=True).start()
    (message,) = _receive(_url(settings.EMBEDDED_REDIS_PORT), queue, timeout=10)
    waited = time.monotonic() - published_at[0]
    assert message.decode() == {"late": True}
    # The consumer was blocked in its wait when the message came: the wake stream, not the
    # 1 s wait timeout, delivered it (generous bound for a loaded machine).
    assert waited < 0.5, f"delivered {waited:.2f}s after the publish"


def test_it_serves_higher_priorities_first_and_rotates_between_queues(scratch: redis.Redis) -> None:
    first, second = _queue(), _queue()
    _publish(first, {"q": "first", "p": 0})
    bodies: tuple[tuple[Queue, dict[str, Any]], ...] = (
        (second, {"q": "second", "p": 0}),
        (second, {"q": "second", "p": 9}),
    )
    for queue, body in bodies:
        with Connection(_url(settings.EMBEDDED_REDIS_PORT)) as conn:
            Producer(conn.channel()).publish(
                body,
                exchange=queue.exchange,
                routing_key=queue.routing_key,
                declare=[queue],
                priority=body["p"],
            )
    _publish(first, {"q": "first", "p": 0, "n": 2})
    order: list[dict[str, Any]] = []
    with Connection(_url(settings.EMBEDDED_REDIS_PORT)) as conn:

        def take(message: Message) -> None:
            order.append(message.decode())
            message.ack()

        with Consumer(conn, queues=[first, second], on_message=take, prefetch_count=1):
            deadline = time.monotonic() + 10
            while len(order) < 4 and time.monotonic() < deadline:
                with contextlib.suppress(socket.timeout, TimeoutError):
                    conn.drain_events(timeout=0.5)
    # kombu's redis priorities: a lower number is served first ("0" is the highest step).
    assert order[0] == {"q": "first", "p": 0}
    assert {"q": "second", "p": 0} in order[1:3], "the other queue gets its turn before first's next"
    assert len(order) == 4


def test_it_keeps_an_unreadable_queue_entry_instead_of_dropping_it(scratch: redis.Redis) -> None:
    queue = _queue()
    _publish(queue, {"good": 1})
    scratch.rpush(queue.name, b"\x00 not a kombu message")  # served before the good one (RPOP end)
    received = _receive(_url(settings.EMBEDDED_REDIS_PORT), queue, timeout=5)
    assert [m.decode() for m in received] == [{"good": 1}]
    assert scratch.lrange(UNDECODABLE_KEY, 0, -1) == [b"\x00 not a kombu message"]


def _envelope(body: str, *, body_first: bool = True) -> bytes:
    """A queue entry as kombu writes one (`dumps` of the message, body first), or with another order."""
    properties = {
        "delivery_tag": str(uuid.uuid4()),
        "delivery_info": {"exchange": "", "routing_key": "q"},
        "body_encoding": "base64" if body_first else None,
    }
    parts = {
        "content-encoding": "utf-8",
        "content-type": "application/json",
        "headers": {},
        "properties": properties,
    }
    return json.dumps({"body": body, **parts} if body_first else {**parts, "body": body}).encode()


@pytest.mark.parametrize(
    ("entry", "reads_body"),
    [
        (_envelope(base64.b64encode(b'{"n": 1}' * 5000).decode()), False),  # kombu's: the head alone
        (_envelope(""), False),
        (_envelope('{"quoted": "a \\"b\\" c"}'), True),  # a quote inside the body: read whole
        (_envelope("ends in a backslash \\"), True),
        (_envelope("properties first", body_first=False), True),
    ],
)
def test_the_pop_script_reads_a_body_only_when_it_cannot_tell_where_it_ends(
    scratch: redis.Redis, entry: bytes, reads_body: bool
) -> None:
    script = ENVELOPE_HEAD_LUA + "local ok, m = envelope_head(ARGV[1]); return cjson.encode({ok, m})"
    ok, message = json.loads(scratch.eval(script, 0, entry))
    whole = json.loads(entry)
    assert ok is True
    assert message["properties"] == whole["properties"]
    assert ("body" in message) is reads_body
    if reads_body:
        assert message == whole


def _kombu_message(body: Any) -> dict[str, Any]:
    """A message dict as kombu's virtual channel hands it to `_put`, with kombu-typed headers."""
    return {
        "body": body,
        "content-encoding": "utf-8",
        "content-type": "application/x-orjson",
        "headers": {
            "task": "events.process_batch",
            "id": str(uuid.uuid4()),
            "eta": datetime(2026, 12, 2, 12, 0, tzinfo=UTC),  # kombu writes these as __type__ wrappers
            "ref": uuid.uuid4(),
            "amount": Decimal("1.50"),
            "timelimit": [None, None],
        },
        "properties": {
            "delivery_tag": str(uuid.uuid4()),
            "delivery_info": {"exchange": "", "routing_key": "q"},
            "body_encoding": "base64",
            "priority": 0,
        },
    }


@pytest.mark.parametrize(
    "body",
    [
        base64.b64encode(b'{"n": 1}' * 5000).decode(),  # what kombu puts there: base64 text
        'quotes " and \\ backslashes, caf\u00e9, a tab\t and \u2028',  # anything a string may hold
        b"bytes, not text",  # not kombu's shape: kombu's own dumps, unchanged
    ],
    ids=["base64", "escapes", "bytes"],
)
def test_a_queue_entry_reads_back_as_kombus_own_and_keeps_the_scripts_fast_path(
    scratch: redis.Redis, body: Any
) -> None:
    message = _kombu_message(body)

    entry = queue_entry(message)

    assert kombu_loads(entry) == kombu_loads(kombu_dumps(message))
    assert isinstance(kombu_loads(entry)["headers"]["ref"], uuid.UUID), "kombu's types come back typed"
    if isinstance(body, str) and "\\" not in body and '"' not in body:
        script = ENVELOPE_HEAD_LUA + "local ok, m = envelope_head(ARGV[1]); return cjson.encode({ok, m})"
        ok, head = json.loads(scratch.eval(script, 0, entry))
        assert ok is True and "body" not in head, "the pop script read the head alone"
        assert head["properties"] == message["properties"]


@pytest.mark.parametrize(
    ("body", "base64_encoded"),
    [
        (b"payload" * 1000, True),  # kombu's: the script reads the head alone
        (b'{"quoted": "a \\"b\\" c"}', False),  # quotes in the body: the script reads it whole
    ],
)
def test_a_message_comes_through_whole_whichever_way_the_script_read_it(
    scratch: redis.Redis, body: bytes, base64_encoded: bool
) -> None:
    queue = _queue()
    _publish(queue, {"warm": "up"})  # declares the queue
    assert _receive(_url(settings.EMBEDDED_REDIS_PORT), queue, timeout=5)
    entry = json.loads(_envelope(base64.b64encode(body).decode() if base64_encoded else body.decode()))
    entry["properties"]["delivery_info"]["routing_key"] = queue.routing_key
    entry["properties"]["body_encoding"] = "base64" if base64_encoded else None
    scratch.lpush(queue.name, json.dumps(entry))
    (message,) = _receive(_url(settings.EMBEDDED_REDIS_PORT), queue, timeout=5)
    assert message.body == body
    assert message.delivery_tag == entry["properties"]["delivery_tag"]
    assert scratch.hlen("unacked") == 0, "acked"


def test_an_entry_whose_head_reads_but_whose_whole_does_not_is_moved_aside_not_redelivered(
    scratch: redis.Redis,
) -> None:
    queue = _queue()
    _publish(queue, {"good": 1})
    # kombu's shape and a readable head, but a raw control character in the body: Lua's JSON reader
    # takes it (the script pops the entry), Python's does not.
    bad = _envelope("a raw control character: <here>").replace(b"<here>", b"\x01")
    assert b"\x01" in bad
    scratch.rpush(queue.name, bad)  # served before the good one (RPOP end)
    received = _receive(_url(settings.EMBEDDED_REDIS_PORT), queue, timeout=5)
    assert [m.decode() for m in received] == [{"good": 1}]
    assert scratch.lrange(UNDECODABLE_KEY, 0, -1) == [bad]
    assert scratch.hlen("unacked") == 0 and scratch.zcard("unacked_index") == 0, "no copy left to sweep back"


def test_a_redis_url_means_the_atomic_transport_and_still_reads_redis(scratch: redis.Redis) -> None:
    with app.connection_for_write() as conn:
        assert isinstance(conn.transport, Transport)
        # Flower's broker view and queue lengths recognise a broker by its URL's scheme.
        assert conn.as_uri().startswith("redis://:**@127.0.0.1:")
    with Connection(_url(settings.EMBEDDED_REDIS_PORT)) as conn:
        assert isinstance(conn.transport, Transport)


def test_publishes_and_acks_share_one_client_until_the_pool_is_replaced(scratch: redis.Redis) -> None:
    with Connection(_url(settings.EMBEDDED_REDIS_PORT)) as conn:
        channel: Any = conn.default_channel
        first = channel._create_client()

        assert channel._create_client() is first  # not a new client object per ack or publish
        assert first.connection_pool is channel.pool
        channel._after_fork()  # what kombu does in a forked child: the pools are replaced
        after = channel._create_client()
        assert after is not first
        assert after.connection_pool is channel.pool
        assert after.ping()
        assert channel._create_client(asynchronous=True) is not after  # the consuming pool's own


def test_every_publish_leaves_its_receipt_beside_the_message(scratch: redis.Redis) -> None:
    """The receipt is written in the publish's MULTI, so it exists exactly when the message was
    pushed: what a publisher whose reply was lost asks afterwards (events.publishing.publish_landed)."""
    queue = _queue()
    task_id = str(uuid.uuid4())
    _publish(queue, {"n": 1}, id=task_id)
    _publish(queue, {"n": 2})  # a message without a task id (not Celery's) gets no receipt

    assert scratch.llen(queue.name) == 2
    assert scratch.get(published_key(task_id)) == b"1"
    assert 0 < scratch.ttl(published_key(task_id)) <= PUBLISHED_TTL_SECONDS
    assert scratch.keys(f"{PUBLISHED_KEY_PREFIX}*") == [published_key(task_id).encode()]
