"""The API's memory of event ids (docs/api.md, "Idempotency"): a repeat within 24 h is a duplicate.

Ids are *reserved* before publishing (SET NX of a "reserved" marker with a short TTL) and
*confirmed* (the marker becomes "published", with the dedup window as TTL) only after the broker
has the message; a failed publish releases them, so a client's retry after a 503 is accepted, not
called a duplicate. Concurrent requests carrying the same id race on SET NX: exactly one wins.

Only a confirmed id makes a repeat a duplicate. An id that is reserved but not confirmed is in
flight: another request is publishing it, or one whose publish failed could not release it (the
broker and this state are often the same Redis, so a broker outage also fails the release). Its
publish may still fail, so calling the repeat a duplicate could acknowledge an event that never
reaches the broker; the repeat is refused with a 503 instead, until the reservation is confirmed
or expires (found by the fault suite, tests/faults/).

A request's reservation is one server-side Lua call (`_RESERVE_SCRIPT`; one call for all the
requests of a group commit): per id a SET NX and, when that loses, a GET, answered with one digit
per id. It was a pipeline of two commands per id
(1,000 for a batch of 500), and redis-py packing those commands and parsing their replies was about
40 % of the batched API's CPU (docs/decisions.md, "Dedup reservation in one call"). The keys go to
the script as KEYS, never built inside it, so a proxy or cluster client can route the call; on a
Redis Cluster the keys of a call would also need one hash slot (a `{tenant}` tag), as the ledger
commit's would. The script is atomic where the pipeline was not, which only removes a case:
a key expiring between an id's SET NX and its GET (answered "in flight" either way).
"""

from __future__ import annotations

import enum
from collections.abc import Sequence

import redis
from django.conf import settings

from cloudscale_project.state import state_redis

# Covers a publish with all its retries (3 attempts, socket timeouts of 3-5 s: under 20 s); a
# crashed API process or an unreleased failed publish frees the id after it.
RESERVATION_SECONDS = 60
_RESERVED = b"reserved"
# Confirmed ids hold "1", the value every id held before reservations were told apart: keys
# written by an older API process still read as confirmed.
_PUBLISHED = b"1"


class Claim(enum.Enum):
    NEW = "new"  # reserved by this call: publish, then confirm or release
    DUPLICATE = "duplicate"  # confirmed earlier (or repeated within this call): do not publish
    IN_FLIGHT = "in_flight"  # reserved by another request and not confirmed: retry later


_client = state_redis  # one client (and connection pool) per process


# KEYS: the dedup keys of a call's distinct ids. ARGV: the reserved marker, its TTL.
# Reply: one ASCII digit per key, in KEYS order: 1 reserved now (new), 0 reserved and not
# confirmed (in flight; also a key gone between SET and GET, which cannot happen inside a script
# but is what the pipeline before it answered), 2 any other value (confirmed: a duplicate). One
# bulk string rather than an array of integers: redis-py parses it as one reply, not one per key.
_RESERVE_SCRIPT = """
local out = {}
for i = 1, #KEYS do
  if redis.call('SET', KEYS[i], ARGV[1], 'NX', 'EX', ARGV[2]) then
    out[i] = '1'
  else
    local value = redis.call('GET', KEYS[i])
    if value == false or value == ARGV[1] then out[i] = '0' else out[i] = '2' end
  end
end
return table.concat(out)
"""
_RESERVE_ARGS = (_RESERVED, RESERVATION_SECONDS)
# A byte of the script's reply (iterating bytes gives ints) -> the id's claim.
_CLAIMS = {ord("1"): Claim.NEW, ord("0"): Claim.IN_FLIGHT, ord("2"): Claim.DUPLICATE}


def seen_key(tenant: str, event_id: str) -> str:
    return f"seen:{tenant}:{event_id}"


def reserve_event_ids(*, tenant: str, event_ids: Sequence[str]) -> list[Claim]:
    """The claim of each id, by position. An id repeated within `event_ids` is a duplicate after
    its first position (unless the first is in flight elsewhere: then it is in flight too)."""
    return reserve_event_id_lists(tenant=tenant, id_lists=[event_ids])[0]


def reserve_event_id_lists(*, tenant: str, id_lists: Sequence[Sequence[str]]) -> list[list[Claim]]:
    """The claims of several requests' ids (a group commit's members) in one script call.

    Each list is claimed as `reserve_event_ids` claims one request's ids, in order: an id that an
    earlier list of the call reserved is in flight for a later one, exactly as if the two
    requests had made their own calls one after the other.
    """
    uniques = [list(dict.fromkeys(event_ids)) for event_ids in id_lists]
    keys = [seen_key(tenant, event_id) for unique in uniques for event_id in unique]
    reply = b""
    if keys:
        client = _client()
        # Registered per call (a SHA-1 of a short text): the client can change under a test
        # (`state_redis.cache_clear()`), and a NOSCRIPT after a server restart is answered by
        # redis-py's Script loading the text and retrying.
        reply = client.register_script(_RESERVE_SCRIPT)(keys=keys, args=_RESERVE_ARGS)
    claims_by_list: list[list[Claim]] = []
    offset = 0
    for event_ids, unique in zip(id_lists, uniques, strict=True):
        digits = reply[offset : offset + len(unique)]
        offset += len(unique)
        claims = {event_id: _CLAIMS[digit] for event_id, digit in zip(unique, digits, strict=True)}
        out: list[Claim] = []
        seen: set[str] = set()
        for event_id in event_ids:
            claim = claims[event_id]
            out.append(Claim.DUPLICATE if event_id in seen and claim is Claim.NEW else claim)
            seen.add(event_id)
        claims_by_list.append(out)
    return claims_by_list


def confirm_event_ids(
    *, tenant: str, event_ids: Sequence[str], pipe: redis.client.Pipeline | None = None
) -> None:
    """Mark published ids as seen for the dedup window (queued only, when `pipe` is given)."""
    own = pipe is None
    pipe = _client().pipeline(transaction=False) if pipe is None else pipe
    for event_id in event_ids:
        pipe.set(seen_key(tenant, event_id), _PUBLISHED, ex=settings.DEDUP_WINDOW_SECONDS)
    if own:
        pipe.execute()


def release_event_ids(*, tenant: str, event_ids: Sequence[str]) -> None:
    if event_ids:
        _client().delete(*[seen_key(tenant, event_id) for event_id in event_ids])
