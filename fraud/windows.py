"""Where the rules' sliding windows live, and where they are evaluated: state shared by every worker.

Redis adapter. A whole batch is one server-side Lua call (`_SCRIPT`): for every (rule, subject) the
batch touches it adds the new events, trims what no window can need any more, sets the TTL and
examines every window that contains a new event, exactly the windows `fraud.rules.find_hits`
examines. What comes back is only the hits: per hitting window bucket its end, its count and the
members needed for the alert (at most `MAX_ALERT_EVENT_IDS`). A batch that hits nothing gets an
empty reply however large its windows are; before, every window's members went to the worker and
were decoded there, which was 45 % of the worker's CPU.

The script runs atomically, so of two workers adding to the same subject at once the later one
always sees both sets of events, as with the MULTI/EXEC it replaces.

Two layouts of a subject's window:

- counting rules (`fraud:{tenant}:{rule}:{subject}`): a sorted set with one member per event (its
  id first, so a redelivered event is the same member and is not counted twice), score = event time;
- the distinct-users rule (`...:users`, plus the hash `...:last`): one member per *user*, score =
  the user's latest event time (ZADD GT), and the hash holds that event's id and type for the alert.
  A busy address then costs what its number of users costs, not its number of events. The count
  of a window is the number of users whose latest event lies in it: exact for every window that
  ends at or after each user's latest event (the windows a stream in order produces); a window
  examined for a late event can see fewer users than it had, never more.

Trimming: entries older than the subject's newest event time minus window and lateness are
removed, but an event time counts for this at most as the worker's clock: a client's clock can
ask for less trimming (its events are old), never for more. One event stamped hours ahead would
otherwise empty the window and blind the rule to the burst that follows.
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, Protocol

import orjson
import redis
from django.conf import settings

from cloudscale_project.state import state_redis
from fraud.rules import MAX_ALERT_EVENT_IDS, Entry, Hit

_KEY = "fraud:{tenant}:{rule}:{subject}"
# The distinct-users layout has its own key names: a member is a user there, not an event.
_USERS_SUFFIX = ":users"
_LAST_SUFFIX = ":last"
# The script's reply for a large batch is small, but adding 500 events to ~100 windows and
# examining them is more work than a request-path command: a longer timeout than the default.
SCRIPT_TIMEOUT_SECONDS = 5.0

# KEYS: two per update: the window's sorted set, then its hash (used by the distinct-users layout).
# ARGV[1]: one JSON document (one argument costs the client far less to pack than thousands):
#       [now (the trimming ceiling), lateness, max members per hit, updates], each update
#       [window, threshold, distinct (1/0), entries], each entry [time, member, detail]. Times are
#       strings: Redis turns a Lua number into a command argument with 14 digits, which would
#       round an epoch time with microseconds.
# KEYS after them, ARGV[2] (optional): a version key and the version the caller expects there.
# Reply: per update a list of hits, each {end, count, window rows (member, score...), members at
#        end, details of the window rows, details of the members at end} (details: distinct only).
_SCRIPT = """
-- Evaluated only while the key after the windows' keys holds ARGV[2] (the rule settings' version
-- the caller's cached settings were read under): otherwise nothing is added and the reply is
-- {-1, current version}, so the caller reads the settings again and sends the batch again.
if ARGV[2] then
  local current = redis.call('GET', KEYS[#KEYS]) or ''
  if current ~= ARGV[2] then return {-1, current} end
end
local doc = cjson.decode(ARGV[1])
local now, lateness, max_members = tonumber(doc[1]), doc[2], doc[3]
local function fmt(x) return string.format('%.17g', x) end
local reply = {}
for u, update in ipairs(doc[4]) do
  local key, last = KEYS[2 * u - 1], KEYS[2 * u]
  local window, threshold, distinct = update[1], update[2], update[3] == 1
  local times, newest, adds = {}, nil, {}
  for _, entry in ipairs(update[4]) do
    local raw, member = entry[1], entry[2]
    local t = tonumber(raw)
    times[#times + 1] = t
    if newest == nil or t > newest then newest = t end
    if distinct then
      -- GT: a user's entry only moves forward in time; CH: 1 when added or moved.
      if redis.call('ZADD', key, 'GT', 'CH', raw, member) == 1 then
        redis.call('HSET', last, member, entry[3])
      end
    else
      adds[#adds + 1] = raw
      adds[#adds + 1] = member
      if #adds >= 1000 then redis.call('ZADD', key, unpack(adds)); adds = {} end
    end
  end
  if #adds > 0 then redis.call('ZADD', key, unpack(adds)) end

  -- Examine each window (end - window, end] that ends at a known event time and holds a new one;
  -- the first hit of a bucket (floor(end / window)) is the bucket's hit, so jump to the next one.
  table.sort(times)
  local hits = {}
  local from, to = fmt(times[1]), '(' .. fmt(times[#times] + window)
  -- Most subjects hold fewer events than the threshold over the whole span: no window can hit.
  local span = redis.call('ZCOUNT', key, '(' .. fmt(times[1] - window), to)
  while span > threshold do
    local rows = redis.call('ZRANGEBYSCORE', key, from, to, 'WITHSCORES', 'LIMIT', 0, 128)
    if #rows == 0 then break end
    local jumped = false
    for i = 2, #rows, 2 do
      local e = tonumber(rows[i])
      -- the newest new time at or before e: is it inside (e - window, e]?
      local lo, hi = 1, #times
      while lo <= hi do
        local mid = math.floor((lo + hi) / 2)
        if times[mid] <= e then lo = mid + 1 else hi = mid - 1 end
      end
      if hi >= 1 and times[hi] > e - window then
        local start = '(' .. fmt(e - window)
        local count = redis.call('ZCOUNT', key, start, rows[i])
        if count > threshold then
          local members = redis.call(
            'ZRANGEBYSCORE', key, start, rows[i], 'WITHSCORES', 'LIMIT', 0, max_members)
          -- Candidates for the event that closes the window: those at its instant (bounded, as a
          -- Lua unpack is; members at one score come in byte order, event id first).
          local closing = redis.call('ZREVRANGEBYSCORE', key, rows[i], rows[i], 'LIMIT', 0, 100)
          local details, closing_details = {}, {}
          if distinct then
            local names = {}
            for j = 1, #members, 2 do names[#names + 1] = members[j] end
            details = redis.call('HMGET', last, unpack(names))
            closing_details = redis.call('HMGET', last, unpack(closing))
          end
          hits[#hits + 1] = {rows[i], count, members, closing, details, closing_details}
          from = fmt((math.floor(e / window) + 1) * window)
          jumped = true
          break
        end
      end
    end
    if not jumped then from = '(' .. rows[#rows] end
  end
  -- Then trim (after the evaluation: a batch's own old events are judged first), by the newest
  -- event time capped at the server's clock.
  local bound = '(' .. fmt(math.min(newest, now) - window - lateness)
  if distinct then
    local gone = redis.call('ZRANGEBYSCORE', key, '-inf', bound)
    for i = 1, #gone, 1000 do
      redis.call('HDEL', last, unpack(gone, i, math.min(i + 999, #gone)))
    end
    redis.call('EXPIRE', last, window + lateness)
  end
  redis.call('ZREMRANGEBYSCORE', key, '-inf', bound)
  redis.call('EXPIRE', key, window + lateness)

  reply[u] = hits
end
return reply
"""


@dataclass(frozen=True)
class WindowUpdate:
    """New events of one (rule, subject), and how that rule judges its windows."""

    tenant: str
    rule: str
    subject: str
    entries: Sequence[Entry]
    window_seconds: int
    threshold: int
    distinct_users: bool  # one entry per user (the distinct-users rule), not per event


class VersionChanged(Exception):
    """The evaluation was sent for a version that is no longer current: nothing was recorded."""

    def __init__(self, current: int | None) -> None:
        super().__init__(f"the version moved on to {current}")
        self.current = current  # None: the version key does not exist


class PendingHits(Protocol):
    """An evaluation sent to the window store whose reply has not been read yet."""

    def result(self) -> list[list[Hit]]:
        """Wait for the reply: per update, the hits of windows holding a new entry. Raises
        VersionChanged when sent `only_at` a version that was no longer current."""
        ...

    def abandon(self) -> None:
        """Drop the reply unread. The entries may or may not be recorded; recording them again
        (the batch's retry) adds nothing and finds the same hits."""
        ...


class FraudWindowStore(Protocol):
    def add_and_evaluate(self, *, updates: Sequence[WindowUpdate]) -> list[list[Hit]]:
        """Record the new entries; return, per update, the hits of windows holding a new entry."""
        ...

    def begin_add_and_evaluate(
        self, *, updates: Sequence[WindowUpdate], only_at: tuple[str, int] | None = None
    ) -> PendingHits:
        """`add_and_evaluate`, sent now and read later: the caller works while the store does.

        `only_at` (key, version): record and evaluate only while that shared-state key holds that
        version (the updates were built from settings cached under it), in the same round trip.
        """
        ...


def _member(entry: Entry) -> str:
    return orjson.dumps([entry.event_id, entry.user_id, entry.event_type]).decode()


def _detail(entry: Entry) -> str:
    return orjson.dumps([entry.event_id, entry.event_type]).decode()


def _keys(update: WindowUpdate) -> tuple[str, str]:
    key = _KEY.format(tenant=update.tenant, rule=update.rule, subject=update.subject)
    if update.distinct_users:
        return key + _USERS_SUFFIX, key + _USERS_SUFFIX + _LAST_SUFFIX
    return key, key + _LAST_SUFFIX


def _entries(update: WindowUpdate, members: Sequence[bytes], details: Sequence[Any]) -> list[Entry]:
    """Entries of a hit's rows: (member, score) pairs, plus the details of the distinct-users layout."""
    entries = []
    for index in range(0, len(members), 2):
        at = float(members[index + 1])
        if update.distinct_users:
            user_id = members[index].decode()
            event_id, event_type = orjson.loads(details[index // 2] or b'["", ""]')
        else:
            event_id, user_id, event_type = orjson.loads(members[index])
        entries.append(Entry(at=at, event_id=event_id, user_id=user_id, event_type=event_type))
    return sorted(entries, key=lambda e: (e.at, e.event_id))


def _hit(update: WindowUpdate, row: list[Any]) -> Hit:
    end_raw, count, members, closing, details, closing_details = row
    end = float(end_raw)
    in_window = _entries(update, members, details)
    closing_rows: list[bytes] = []
    for member in closing:
        closing_rows += [member, end_raw]
    # The event that closes the window: the last of those at its instant, as find_hits orders them.
    last = _entries(update, closing_rows, closing_details)[-1]
    return Hit(
        bucket=int(end // update.window_seconds),
        window_end=end,
        count=int(count),
        event_ids=tuple(e.event_id for e in in_window[:MAX_ALERT_EVENT_IDS]),
        user_id=last.user_id,
        event_type=last.event_type,
    )


class RedisFraudWindows:
    def __init__(self, client: redis.Redis, *, lateness_seconds: int) -> None:
        self._client = client
        self._script = client.register_script(_SCRIPT)
        # How far behind the newest event of a subject an event may arrive and still be judged
        # against a complete window; older entries are trimmed so a busy subject stays bounded.
        self._lateness = lateness_seconds

    def add_and_evaluate(self, *, updates: Sequence[WindowUpdate]) -> list[list[Hit]]:
        return self.begin_add_and_evaluate(updates=updates).result()

    def begin_add_and_evaluate(
        self, *, updates: Sequence[WindowUpdate], only_at: tuple[str, int] | None = None
    ) -> PendingHits:
        """Send the script on a connection of its own and return; `result()` reads the reply.

        The script runs in Redis while the worker writes the batch to the database (the pipeline
        starts this step before the store and finishes it after): waiting for it was 13 % of a
        500-event message's wall time (docs/benchmarks.md, "Levers, sixth round").
        """
        if not updates:
            if only_at is not None:
                raise ValueError("nothing to send the version with: confirm it before, with a read")
            return _NoHits()
        keys, argument = self._arguments(updates)
        args: list[Any] = [argument]
        if only_at is not None:
            keys.append(only_at[0])
            args.append(str(only_at[1]))
        return _PendingScript(self._client, self._script, updates=updates, keys=keys, args=args)

    def _arguments(self, updates: Sequence[WindowUpdate]) -> tuple[list[str], bytes]:
        keys: list[str] = []
        documents: list[Any] = []
        # An event counts for several rules: its time and member are encoded once, not per rule.
        times: dict[Entry, str] = {}
        members: dict[Entry, str] = {}
        for update in updates:
            keys += _keys(update)
            entries = []
            for entry in update.entries:
                at = times.get(entry)
                if at is None:
                    at = times[entry] = repr(entry.at)
                if update.distinct_users:
                    entries.append([at, entry.user_id, _detail(entry)])
                    continue
                member = members.get(entry)
                if member is None:
                    member = members[entry] = _member(entry)
                entries.append([at, member, ""])
            documents.append([update.window_seconds, update.threshold, int(update.distinct_users), entries])
        return keys, orjson.dumps([repr(time.time()), self._lateness, MAX_ALERT_EVENT_IDS, documents])


class _NoHits:
    def result(self) -> list[list[Hit]]:
        return []

    def abandon(self) -> None:
        pass


class _PendingScript:
    """One `EVALSHA` in flight on a connection taken from the client's pool until it is read."""

    def __init__(
        self,
        client: redis.Redis,
        script: Any,
        *,
        updates: Sequence[WindowUpdate],
        keys: list[str],
        args: list[Any],
    ) -> None:
        self._client = client
        self._script = script
        self._updates = updates
        self._keys = keys
        self._args = args
        self._pool = client.connection_pool
        # The pool hands out a connection it checked: one the server closed is connected again.
        self._connection: Any = self._pool.get_connection()
        try:
            self._connection.send_command("EVALSHA", script.sha, len(keys), *keys, *args)
        except BaseException:
            self._give_back(broken=True)
            raise

    def _give_back(self, *, broken: bool) -> None:
        connection, self._connection = self._connection, None
        if connection is None:
            return
        if broken:
            connection.disconnect()  # a reply may still be on its way: never reuse it
        self._pool.release(connection)

    def result(self) -> list[list[Hit]]:
        if self._connection is None:
            raise RuntimeError("the script's reply was already read or abandoned")
        try:
            replies = self._client.parse_response(self._connection, "EVALSHA")
        except redis.exceptions.NoScriptError:
            self._give_back(broken=False)
            # A Redis that lost its scripts (restarted, flushed): the client's Script loads it.
            replies = self._script(keys=self._keys, args=self._args)
        except BaseException:
            self._give_back(broken=True)
            raise
        else:
            self._give_back(broken=False)
        if replies and replies[0] == -1:  # see _SCRIPT: the version moved on, nothing was added
            raise VersionChanged(int(replies[1]) if replies[1] else None)
        return [[_hit(u, row) for row in hits] for u, hits in zip(self._updates, replies, strict=True)]

    def abandon(self) -> None:
        self._give_back(broken=True)


def get_fraud_window_store() -> FraudWindowStore:
    return RedisFraudWindows(
        state_redis(socket_timeout=SCRIPT_TIMEOUT_SECONDS), lateness_seconds=settings.FRAUD_LATENESS_SECONDS
    )
