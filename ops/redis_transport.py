"""kombu's Redis transport with an atomic consume: no message is ever only in flight.

Registered by settings as kombu's transport for the `redis://` scheme, so every broker connection
to a `redis://` URL (the embedded default included) uses it. kombu consumes with `BRPOP` and
records the message as unacked (`unacked` hash + `unacked_index` sorted set) in a second round
trip, after the reply arrived. If
the server dies after applying the pop but before the client recorded it (a SIGKILL or a SIGTERM
in that instant: Redis persists the pop, then exits without sending pending replies), the message
is in no list at all and is never delivered again.

Here one Lua script pops the message AND records it in the unacked hash and index, so Redis (and
its append-only file, where a script is one MULTI/EXEC block) holds it in exactly one of two
places at every instant: the queue, or the unacked set. A reply that never arrives leaves the
message unacked, and kombu's own visibility-timeout sweep (`QoS.restore_visible`) puts it back.
Everything after the pop is kombu's: ack, reject, requeue, the sweep and the storage format of the
unacked copy (`[payload, exchange, routing_key]`), so workers of either transport can restore
each other's messages.

A script cannot block, so waiting is separate and consumes nothing: when the script finds every
queue empty it returns the newest id of each queue's wake stream, and the consumer then waits with
`XREAD BLOCK` on those streams from those ids. Every publish through this transport appends to its
queue's wake stream in the same MULTI as the `LPUSH`, so a message published after the script ran
wakes the consumer at once (no lost wake-up: the ids were read inside the script). A message pushed
by another client (kombu's stock transport, a requeue by an older worker) is found within
`brpop_timeout` (1 s), when the wait times out and the script runs again. Streams need Redis 5+.

Queue order and fairness are kombu's: the script tries the keys in BRPOP's order (every priority
step of every queue, highest priority first, queues in the round-robin order of kombu's cycle)
and the queue served is rotated to the back of the cycle.
"""

from __future__ import annotations

import logging
from queue import Empty
from time import monotonic, time
from typing import Any

import orjson
from kombu.transport import redis as kombu_redis
from kombu.utils.encoding import bytes_to_str
from kombu.utils.json import loads

from cloudscale_project.publish_receipts import PUBLISHED_TTL_SECONDS, published_key

logger = logging.getLogger(__name__)

# kombu's type stubs (celery-types) do not describe the transport's private API we extend.
_kombu: Any = kombu_redis

# Wake streams are signals, not storage: a consumer only needs "something newer than id X".
WAKE_STREAM_MAXLEN = 100
# Reply queues of remote control (`<uuid>.reply.celery.pidbox`) are created per client: their wake
# streams must not outlive them. A stream that expired is recreated by the next publish, with an
# id newer than any a consumer waits from.
WAKE_STREAM_TTL_SECONDS = 3600
WAKE_KEY_PREFIX = "_cloudscale.wake."
# Envelopes the script cannot read (no JSON object, no delivery tag) are kept here, not dropped:
# kombu's own transport would pop them and lose them in a decoding error.
UNDECODABLE_KEY = "_cloudscale.undecodable"

_POPPED, _UNDECODABLE, _EMPTY = 1, 2, 0


def queue_entry(message: Any) -> str | bytes:
    """What kombu's `dumps` writes to the queue for a message, body first, with the body's string
    encoded by orjson: the standard library's encoder took 1.0 ms for a 500-event message's
    base64 body, against 0.02 ms with orjson, on the API's request thread. The rest goes through kombu's
    own `dumps`, so its types and their `__type__` wrappers are written exactly as kombu writes them,
    and the entry keeps kombu's spacing, which the pop script's fast path reads (`envelope_head`)."""
    body = message.get("body") if isinstance(message, dict) else None
    if not isinstance(body, str) or len(message) < 2:
        return _kombu.dumps(message)
    rest: str = _kombu.dumps({key: value for key, value in message.items() if key != "body"})
    return b'{"body": ' + orjson.dumps(body) + b", " + rest[1:].encode()


def _task_id(message: Any) -> str | None:
    headers = message.get("headers") if isinstance(message, dict) else None
    task_id = headers.get("id") if isinstance(headers, dict) else None
    return task_id if isinstance(task_id, str) and task_id else None


# KEYS: unacked hash, unacked index, undecodable list, the queue keys (in BRPOP order), the wake
# streams. ARGV: the client's clock (the index score kombu's sweep compares with its own clock),
# the number of queue keys. Pops from the first non-empty queue key, like BRPOP; the unacked copy
# is the popped bytes wrapped as kombu's `dumps([payload, exchange, routing_key])` would store it.
#
# The script needs only the envelope's properties, not its body, which is nearly all of a batch's
# bytes: decoding a 500-event envelope whole took 2.5-3.5 ms of the server's one thread. kombu
# writes the body first (`{"body": "…", "content-encoding": …}`), so `envelope_head` decodes the
# rest alone when the body's end is certain: inside a JSON string every quote is escaped, so the
# first quote after the opening one closes the body unless a backslash precedes it. Any other
# shape (another writer's key order, a backslash there, anything that does not decode) is decoded
# whole, as before.
ENVELOPE_HEAD_LUA = """
local function envelope_head(item)
  if string.sub(item, 1, 10) == '{"body": "' then
    local close = string.find(item, '"', 11, true)
    if close and string.sub(item, close - 1, close - 1) ~= '\\\\'
        and string.sub(item, close + 1, close + 3) == ', "' then
      local ok, message = pcall(cjson.decode, '{' .. string.sub(item, close + 3))
      if ok then return ok, message end
    end
  end
  return pcall(cjson.decode, item)
end
"""
POP_SCRIPT = (
    ENVELOPE_HEAD_LUA
    + """
local queues = tonumber(ARGV[2])
for i = 4, 3 + queues do
  local item = redis.call('RPOP', KEYS[i])
  if item then
    local ok, message = envelope_head(item)
    local tag, exchange, routing_key = nil, '', ''
    if ok and type(message) == 'table' and type(message.properties) == 'table' then
      tag = message.properties.delivery_tag
      local info = message.properties.delivery_info
      if type(info) == 'table' then
        if info.exchange ~= nil then exchange = info.exchange end
        if info.routing_key ~= nil then routing_key = info.routing_key end
      end
    end
    if type(tag) ~= 'string' then
      redis.call('LPUSH', KEYS[3], item)
      return {2, KEYS[i], item}
    end
    redis.call('ZADD', KEYS[2], ARGV[1], tag)
    redis.call('HSET', KEYS[1], tag,
      '[' .. item .. ',' .. cjson.encode(exchange) .. ',' .. cjson.encode(routing_key) .. ']')
    return {1, KEYS[i], item, tag}
  end
end
local ids = {0}
for i = 4 + queues, #KEYS do
  local newest = redis.call('XREVRANGE', KEYS[i], '+', '-', 'COUNT', 1)
  if newest[1] then ids[#ids + 1] = newest[1][1] else ids[#ids + 1] = '0-0' end
end
return ids
"""
)


def _report_moved_aside(queue: str) -> None:
    logger.error("an unreadable message on queue %r was moved to the Redis list %r", queue, UNDECODABLE_KEY)


def wake_key(queue: str) -> str:
    return f"{WAKE_KEY_PREFIX}{queue}"


class QoS(_kombu.QoS):
    def restore_unacked(self, client: Any = None) -> None:
        """Requeue this channel's unacked messages at close, unless the transport is torn down
        already: kombu would then fail with an AttributeError (no connection parameters left),
        which kills a Celery worker during its reconnect. The messages are in the unacked set on
        the server either way, and the visibility-timeout sweep hands them out again."""
        transport = self.channel.connection
        if transport is None or transport.client is None:
            logger.warning("%d unacked message(s) left to the visibility timeout", len(self._delivered))
            self._delivered.clear()
            return
        super().restore_unacked(client)

    def append(self, message: Any, delivery_tag: str) -> None:
        # The pop script already wrote the unacked copy in the same step as the pop; writing it
        # again would only cost a round trip. Messages that did not come from the script (fanout
        # deliveries) are recorded the way kombu does it.
        if self.channel.recorded_by_pop.pop(delivery_tag, None) is not None:
            _kombu.virtual.QoS.append(self, message, delivery_tag)
        else:
            super().append(message, delivery_tag)


class Channel(_kombu.Channel):
    QoS = QoS
    _in_poll: Any  # kombu's: the connection a receive is in flight on, else a false value

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        # Delivery tags the pop script recorded, until QoS.append sees their message.
        self.recorded_by_pop: dict[str, bool] = {}
        # What is in flight on the consuming connection: ("pop" | "wait", the queues it covers).
        self._in_flight: tuple[str, list[str]] | None = None
        self._sync_client: Any = None
        super().__init__(*args, **kwargs)
        if self.global_keyprefix:
            # Keys inside a script are not prefixed by kombu's client wrapper; refusing is safer
            # than consuming from keys nobody publishes to.
            raise ValueError("the atomic Redis transport does not support global_keyprefix")

    def _create_client(self, asynchronous: bool = False) -> Any:
        """kombu makes a new client object for every publish and every ack, and redis-py builds a
        table of some 200 reply callbacks for each (4 % of a worker's CPU per single-event
        message). The client of the synchronous pool is kept while the pool is the same one
        (kombu makes a new pool after a fork); a client is thread-safe, each command takes a
        connection from the pool."""
        if asynchronous:
            return super()._create_client(asynchronous=True)
        pool = self.pool
        if self._sync_client is None or self._sync_client.connection_pool is not pool:
            self._sync_client = super()._create_client()
        return self._sync_client

    # --- consuming ------------------------------------------------------------------------------

    def close(self) -> None:
        # kombu reads a reply still in flight before it closes. On a dead connection that raises,
        # kombu's close stops half-way, and a second close later finds the transport gone. Here a
        # lost reply is no loss (a popped message is unacked on the server already), so a
        # connection error only ends the read.
        self._closing = True
        if self._in_poll:
            try:
                self._brpop_read()
            except Empty:
                pass
            except self.connection_errors:
                self._in_poll = None
        super().close()

    def _pop_command(self, queues: list[str]) -> list[Any]:
        keys = [self._q_for_pri(queue, pri) for pri in self.priority_steps for queue in queues]
        wakes = [wake_key(queue) for queue in queues]
        all_keys = [self.unacked_key, self.unacked_index_key, UNDECODABLE_KEY, *keys, *wakes]
        return ["EVAL", POP_SCRIPT, len(all_keys), *all_keys, repr(time()), len(keys)]

    def _brpop_start(self, timeout: float | None = None) -> None:
        """Send the pop script (kombu's name: the event loop calls this to start a receive)."""
        queues = self._queue_cycle.consume(len(self.active_queues))
        if not queues:
            return
        self._in_flight = ("pop", queues)
        self._in_poll = self.client.connection
        self._brpop_sent_at = monotonic()
        self.client.connection.send_command(*self._pop_command(queues))

    def _send_wait(self, queues: list[str], ids: list[Any]) -> None:
        timeout_ms = int((self.brpop_timeout or 1) * 1000)
        streams = [wake_key(queue) for queue in queues]
        self._in_flight = ("wait", queues)
        self._brpop_sent_at = monotonic()
        self.client.connection.send_command(
            "XREAD", "BLOCK", timeout_ms, "STREAMS", *streams, *[bytes_to_str(i) for i in ids]
        )

    def _brpop_read(self, **options: Any) -> bool:
        """Read the reply of whatever is in flight: the pop script or the wait."""
        in_flight, self._in_flight = self._in_flight, None
        kind_sent, queues = in_flight or ("pop", [])
        connection = self.client.connection
        try:
            reply = self.client.parse_response(
                connection, "XREAD" if kind_sent == "wait" else "EVAL", **options
            )
        except self.connection_errors:
            self._in_poll = None
            connection.disconnect()
            raise
        except BaseException:
            self._in_poll = None
            raise
        if kind_sent == "wait" or not reply:
            # Woken (or timed out): the next poll start runs the pop script again.
            self._in_poll = None
            self._flush_brpop_reauth()
            raise Empty()
        kind = int(reply[0])
        if kind == _EMPTY:
            if self._closing:
                self._in_poll = None
            else:  # still in poll: wait on the wake streams from the ids the script read
                self._send_wait(queues, list(reply[1:]))
            raise Empty()
        self._in_poll = None
        self._flush_brpop_reauth()
        dest = bytes_to_str(reply[1]).rsplit(self.sep, 1)[0]
        self._queue_cycle.rotate(dest)
        if kind == _UNDECODABLE:
            _report_moved_aside(dest)
            raise Empty()
        self.connection._deliver(self._popped_payload(reply, dest), dest)
        return True

    def _popped_payload(self, reply: Any, dest: str) -> Any:
        """The envelope of a message the script popped, its tag noted as recorded by the pop.

        The script reads only what it needs (the properties), and Lua's JSON reader takes text
        Python's refuses (a raw control character in a string): a message whose whole text does
        not decode here is moved aside as the script moves what it cannot read, its unacked copy
        with it, rather than left for the visibility sweep to hand out again forever (Empty)."""
        item, tag = reply[2], bytes_to_str(reply[3])
        try:
            payload = loads(bytes_to_str(item))
        except ValueError:  # not JSON to Python
            with self.conn_or_acquire() as client, client.pipeline(transaction=True) as pipe:
                pipe.lpush(UNDECODABLE_KEY, item)
                pipe.hdel(self.unacked_key, tag)
                pipe.zrem(self.unacked_index_key, tag)
                pipe.execute()
            _report_moved_aside(dest)
            raise Empty() from None
        self.recorded_by_pop[tag] = True
        return payload

    def basic_get(self, queue: str, no_ack: bool = False, **kwargs: Any) -> Any:
        """kombu's basic_get; a no-ack get also drops the unacked copy the pop script wrote.

        kombu's own transport records a got message as unacked only when an ack is expected. The
        pop script records every popped message in the same step as the pop, so without this a
        message taken with `no_ack=True` stayed in the unacked set and the visibility sweep
        delivered it again, minutes later (found by a test whose drained messages came back in a
        later test's worker). A process that dies between the pop and this removal leaves the copy,
        and the message is delivered again: at least once, never lost.
        """
        message = super().basic_get(queue, no_ack=no_ack, **kwargs)
        if message is not None and no_ack:
            tag = message.delivery_tag
            self.recorded_by_pop.pop(tag, None)
            self.qos._remove_from_indices(tag).execute()
        return message

    def _get(self, queue: str) -> Any:
        """basic_get (synchronous): the same script, one queue, no waiting."""
        with self.conn_or_acquire() as client:
            command = self._pop_command([queue])
            reply = client.execute_command(*command)
            self._maybe_update_queues_expire(client, queue)
        if int(reply[0]) != _POPPED:
            raise Empty()
        return self._popped_payload(reply, queue)

    # --- publishing ------------------------------------------------------------------------------

    def _put(self, queue: str, message: Any, **kwargs: Any) -> None:
        """LPUSH, plus a wake-up entry for waiting consumers and the task's publish receipt
        (`published_key`), in one MULTI."""
        pri = self._get_message_priority(message, reverse=False)
        key = self._q_for_pri(queue, pri)
        body = queue_entry(message)
        wake = wake_key(queue)
        expires = self._expires.get(queue) if self._expires else None
        task_id = _task_id(message)
        publish_batch = kwargs.pop("_publish_batch", None)
        if publish_batch is not None:
            publish_batch.add("lpush", key, body)
            publish_batch.add("xadd", wake, {"m": "1"}, "*", WAKE_STREAM_MAXLEN, True)
            publish_batch.add("expire", wake, WAKE_STREAM_TTL_SECONDS)
            if task_id:
                publish_batch.add("set", published_key(task_id), 1, PUBLISHED_TTL_SECONDS)
            for p in self.priority_steps if expires else ():
                publish_batch.add("pexpire", self._q_for_pri(queue, p), expires)
            return
        with self.conn_or_acquire() as client, client.pipeline(transaction=True) as pipe:
            pipe.lpush(key, body)
            pipe.xadd(wake, {"m": "1"}, maxlen=WAKE_STREAM_MAXLEN, approximate=True)
            pipe.expire(wake, WAKE_STREAM_TTL_SECONDS)
            if task_id:
                pipe.set(published_key(task_id), 1, ex=PUBLISHED_TTL_SECONDS)
            for p in self.priority_steps if expires else ():
                pipe.pexpire(self._q_for_pri(queue, p), expires)
            pipe.execute()

    def _do_restore_message(
        self, payload: Any, exchange: str, routing_key: str, pipe: Any, leftmost: bool = False
    ) -> None:
        """kombu's restore (requeue, sweep), plus a wake-up so a waiting consumer sees it now."""
        super()._do_restore_message(payload, exchange, routing_key, pipe, leftmost)
        for queue in self._lookup(exchange, routing_key):
            pipe.xadd(wake_key(queue), {"m": "1"}, maxlen=WAKE_STREAM_MAXLEN, approximate=True)
            pipe.expire(wake_key(queue), WAKE_STREAM_TTL_SECONDS)


class Transport(_kombu.Transport):
    Channel = Channel
    # Batch publishing is kombu's; our _put adds its commands to the same batch.
    driver_type = driver_name = "redis"
