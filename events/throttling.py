"""Rate limits shared by every API process, decided atomically in Redis by one Lua script.

- per client address: a token bucket (capacity 100, refilled at 10/s); an IPv6 client is its /64
  (`RATE_LIMIT_IPV6_PREFIX`), because one host routinely holds a whole /64;
- global: a sliding window of 10,000 requests per minute (the weighted two-window counter, O(1)),
  spent only by requests of an active tenant. Requests without one (no key, a wrong key, a
  disabled tenant: they end in 401/403) spend a separate, smaller anonymous window instead, so a
  flood of them cannot make the tenants' requests 429;
- fair share: while the global window is contended (over `RATE_LIMIT_CONTENDED_AT` of it), a
  tenant that holds more than `RATE_LIMIT_TENANT_SHARE` of the window is refused, so one tenant
  never takes the whole platform (docs/decisions.md, "Fair rate limits");
- optionally per tenant: a token bucket of events per second (cost = events in the request);
- per tenant, for reads (GET): a token bucket of read requests per second, so a loop on a read
  endpoint cannot spend the event store's throughput for everyone.
A request consumes from every limit only when all of them allow it, so a rejected request never
drains a bucket. The clock is Redis's own (TIME), so API hosts with skewed clocks agree.
"""

from __future__ import annotations

import ipaddress
import math
import threading
from collections.abc import Callable
from dataclasses import dataclass, field
from functools import cache, lru_cache
from typing import Any

import redis
from django.conf import settings

from cloudscale_project.state import state_redis

_WINDOW_SECONDS = 60
_STALE = 2  # the script's first reply element when a cached key lookup's version moved on

_SCRIPT = """
-- One call decides several checks, in order, each as if it were a call of its own (concurrent
-- requests of one API process share a call: `_Batcher`). ARGV[1]: the number of checks; then per
-- check its number of keys and of arguments, then its arguments; KEYS: each check's keys in turn.
-- Reply: one decision per check.
local function decide(KEYS, ARGV, now)
  local capacity, rate = tonumber(ARGV[1]), tonumber(ARGV[2])
  local window_limit, window = tonumber(ARGV[3]), tonumber(ARGV[4])
  local tenant_rate, cost = tonumber(ARGV[5]), tonumber(ARGV[6])
  local share_limit, contended_at = tonumber(ARGV[7]), tonumber(ARGV[8])
  local read_rate, read_burst = tonumber(ARGV[9]), tonumber(ARGV[10])
  local window_scope = ARGV[11]

  -- The sliding windows (the weighted two-window counter): this window's count plus the previous
  -- one's, weighted by overlap. Both windows' counters are read with one MGET, and with them, when
  -- the caller's API-key lookup came from its cache, the key cache's version KEYS[6]: the request
  -- needs no GET of its own for it. If the version is not ARGV[12], nothing is decided or spent: the
  -- caller looks the key up again and asks again for what the key is now.
  local current = math.floor(now / window)
  local elapsed = now - current * window
  local window_key, share_key = KEYS[2] .. ':' .. current, KEYS[4] .. ':' .. current
  local counts
  if #KEYS >= 6 then
    counts = redis.call('MGET', KEYS[2] .. ':' .. (current - 1), window_key,
                        KEYS[4] .. ':' .. (current - 1), share_key, KEYS[6])
    local key_version = counts[5] or ''
    if key_version ~= ARGV[12] then
      return {2, 'stale', '0', '0', '0', key_version}
    end
  else
    counts = redis.call('MGET', KEYS[2] .. ':' .. (current - 1), window_key,
                        KEYS[4] .. ':' .. (current - 1), share_key)
  end
  local function window_estimate(prev_count, cur_count)
    return prev_count * (window - elapsed) / window + cur_count
  end
  -- how long until one more request fits under `limit`
  local function window_wait(limit, prev_count, cur_count)
    if cur_count + 1 > limit then
      return window - elapsed
    end
    return math.max(window * (1 - (limit - cur_count - 1) / prev_count) - elapsed, 0.001)
  end

  local function refill(key, cap, per_second)
    local state = redis.call('HMGET', key, 'tokens', 'ts')
    local tokens = tonumber(state[1]) or cap
    local ts = tonumber(state[2]) or now
    return math.min(cap, tokens + math.max(0, now - ts) * per_second)
  end

  -- 1. per-address token bucket
  local ip_tokens = refill(KEYS[1], capacity, rate)
  local function deny(scope, wait)
    return {0, scope, tostring(wait), tostring(ip_tokens), tostring((capacity - ip_tokens) / rate)}
  end
  if ip_tokens < 1 then
    return deny('ip', (1 - ip_tokens) / rate)
  end

  -- 2. the window this request spends: the tenants' global one, or the anonymous one
  local prev_count, cur_count = tonumber(counts[1]) or 0, tonumber(counts[2]) or 0
  local estimate = window_estimate(prev_count, cur_count)
  if estimate + 1 > window_limit then
    return deny(window_scope, window_wait(window_limit, prev_count, cur_count))
  end

  -- 3. fair share: only while the window is contended, and only for a tenant over its share
  if share_limit > 0 then
    local share_prev, share_cur = tonumber(counts[3]) or 0, tonumber(counts[4]) or 0
    if estimate + 1 > contended_at and window_estimate(share_prev, share_cur) + 1 > share_limit then
      return deny('share', window_wait(share_limit, share_prev, share_cur))
    end
  end

  -- 4. optional per-tenant events-per-second bucket (one second of burst)
  local tenant_tokens = 0
  if tenant_rate > 0 then
    tenant_tokens = refill(KEYS[3], tenant_rate, tenant_rate)
    -- a request larger than one second of quota passes on a full bucket and leaves a debt
    if tenant_tokens < math.min(cost, tenant_rate) then
      local wait = (math.min(cost, tenant_rate) - tenant_tokens) / tenant_rate
      return deny('tenant', math.max(wait, 0.001))
    end
  end

  -- 5. per-tenant read bucket
  local read_tokens = 0
  if read_rate > 0 then
    read_tokens = refill(KEYS[5], read_burst, read_rate)
    if read_tokens < 1 then
      return deny('reads', math.max((1 - read_tokens) / read_rate, 0.001))
    end
  end

  -- every limit allows it: consume. A window's counter gets its expiry in the write that creates
  -- it (the script is atomic, and its effects reach the append-only file as one transaction), not
  -- again in every request's.
  ip_tokens = ip_tokens - 1
  redis.call('HSET', KEYS[1], 'tokens', tostring(ip_tokens), 'ts', tostring(now))
  redis.call('EXPIRE', KEYS[1], math.ceil(capacity / rate) + 1)
  if redis.call('INCR', window_key) == 1 then
    redis.call('EXPIRE', window_key, window * 2 + 1)
  end
  if share_limit > 0 then
    -- counted whether or not the window is contended: when contention starts, recent use is known
    if redis.call('INCR', share_key) == 1 then
      redis.call('EXPIRE', share_key, window * 2 + 1)
    end
  end
  if tenant_rate > 0 then
    redis.call('HSET', KEYS[3], 'tokens', tostring(tenant_tokens - cost), 'ts', tostring(now))
    redis.call('EXPIRE', KEYS[3], 10)
  end
  if read_rate > 0 then
    redis.call('HSET', KEYS[5], 'tokens', tostring(read_tokens - 1), 'ts', tostring(now))
    redis.call('EXPIRE', KEYS[5], math.ceil(read_burst / read_rate) + 1)
  end
  return {1, '', '0', tostring(ip_tokens), tostring((capacity - ip_tokens) / rate)}
end

local t = redis.call('TIME')
local now = tonumber(t[1]) + tonumber(t[2]) / 1e6
local decisions = {}
local key_at, arg_at = 1, 2
for check = 1, tonumber(ARGV[1]) do
  local key_count, arg_count = tonumber(ARGV[arg_at]), tonumber(ARGV[arg_at + 1])
  local keys, argv = {}, {}
  for i = 1, key_count do keys[i] = KEYS[key_at + i - 1] end
  for i = 1, arg_count do argv[i] = ARGV[arg_at + 1 + i] end
  key_at, arg_at = key_at + key_count, arg_at + 2 + arg_count
  decisions[check] = decide(keys, argv, now)
end
return decisions
"""


@dataclass(frozen=True)
class RateDecision:
    allowed: bool
    # "ip", "global", "anonymous", "share", "tenant", "reads", or "" when allowed
    limited_by: str
    retry_after_seconds: int
    limit: int
    remaining: int
    reset_seconds: int
    # Nothing was decided: the version `cached_under` names is no longer current. `key_version`
    # is the current one (None: the version key does not exist).
    stale: bool = False
    key_version: int | None = None

    def headers(self) -> dict[str, str]:
        """IETF RateLimit-* headers for the per-address bucket (the limit a client can act on)."""
        return {
            "RateLimit-Limit": str(self.limit),
            "RateLimit-Remaining": str(self.remaining),
            "RateLimit-Reset": str(self.reset_seconds),
        }


@lru_cache(maxsize=1024)
def _tenant_keys(window_key: str, tenant: str) -> tuple[bytes, ...]:
    """KEYS[2..5], encoded once per tenant."""
    return tuple(
        key.encode()
        for key in (window_key, f"rl:tenant:{tenant}", f"rl:share:{tenant}", f"rl:reads:{tenant}")
    )


@lru_cache(maxsize=64)
def _limits_argv(limits: tuple[float, ...], window_scope: str) -> tuple[tuple[bytes, ...], tuple[bytes, ...]]:
    """ARGV[1..5] and ARGV[7..11] (the limits, ARGV[6] the request's cost between them), encoded
    once per set of settings rather than by redis-py on every call, as it would encode them."""
    encoded = tuple(repr(value).encode() for value in limits)
    return encoded[:5], (*encoded[5:], window_scope.encode())


@cache
def _script() -> redis.commands.core.Script:
    # Registered once; run on the process's current shared-state client (state_redis is cached).
    return state_redis().register_script(_SCRIPT)


def rate_limit_subject(ip: str) -> str:
    """The bucket an address spends: an IPv4 address itself; an IPv6 address's network of
    `RATE_LIMIT_IPV6_PREFIX` bits (a host gets a whole /64, and every address in it would
    otherwise be a fresh bucket). An IPv4-mapped IPv6 address is its IPv4 address."""
    try:
        address = ipaddress.ip_address(ip)
    except ValueError:
        return ip  # not an address (e.g. an empty peer): its own bucket, as before
    if isinstance(address, ipaddress.IPv6Address):
        if address.ipv4_mapped is not None:
            return str(address.ipv4_mapped)
        return str(ipaddress.ip_network(f"{address}/{settings.RATE_LIMIT_IPV6_PREFIX}", strict=False))
    return str(address)


@dataclass(eq=False)
class _Check:
    """One request's keys and arguments, and, once its call returned, its decision or the error."""

    keys: list[str | bytes]
    args: list[bytes]
    done: threading.Event = field(default_factory=threading.Event)
    reply: Any = None
    error: BaseException | None = None
    send_next: bool = False  # woken to send the checks that queued behind a call, itself among them


def _send(checks: list[_Check]) -> list[Any]:
    """One script call for `checks`, in order; the decisions, by position."""
    keys: list[str | bytes] = []
    args: list[str | bytes | int] = [len(checks)]
    for check in checks:
        keys += check.keys
        args += [len(check.keys), len(check.args), *check.args]
    client, script = state_redis(), _script()
    try:
        return list(client.evalsha(script.sha, len(keys), *keys, *args))
    except redis.exceptions.NoScriptError:  # a restarted server: the script object loads it again
        return list(script(keys=keys, args=args, client=client))


class _Batcher:
    """Concurrent checks of one process share a script call, and no check waits for a timer.

    A check that finds no call in flight is sent at once, alone. One that finds a call in flight
    queues; when that call returns, the first queued check is woken to send every check queued by
    then in one call. Under 50 clients, 77-79 % of an API process's checks began while another of
    its checks was in flight (docs/benchmarks.md, "Levers, thirty-first round"). A shared call
    spares every check but one its own round trip: the system calls on both sides and the fixed
    cost of a script call.
    The script decides a call's checks one after another, each as a call of its own would be, so
    what each request is told and spends is what it was told and spent before.
    """

    def __init__(self, send: Callable[[list[_Check]], list[Any]]) -> None:
        self._send = send
        self._lock = threading.Lock()
        self._queued: list[_Check] = []
        self._in_flight = False

    def decide(self, check: _Check) -> Any:
        """`check`'s decision (its script reply); raises what its call raised."""
        batch = self._batch_for(check)
        if batch is not None:
            self._call(batch, sender=check)
        return self._outcome(check)

    def _batch_for(self, check: _Check) -> list[_Check] | None:
        """What `check`'s thread sends: itself alone when no call is in flight, else (once woken to
        send) every check queued behind that call; None when another thread's call carried it."""
        with self._lock:
            if not self._in_flight:
                self._in_flight = True
                return [check]
            self._queued.append(check)
        check.done.wait()
        if not check.send_next:
            return None
        with self._lock:
            batch, self._queued = self._queued, []
        return batch

    def _call(self, batch: list[_Check], *, sender: _Check) -> None:
        try:
            for each, reply in zip(batch, self._send(batch), strict=True):
                each.reply = reply
        except BaseException as exc:  # every check of the call must hear of it
            for each in batch:
                each.error = exc
        finally:
            with self._lock:
                following = self._queued[0] if self._queued else None
                if following is None:
                    self._in_flight = False
            for each in batch:
                if each is not sender:
                    each.done.set()
            if following is not None:  # the call stays in flight: the next one is its to send
                following.send_next = True
                following.done.set()

    @staticmethod
    def _outcome(check: _Check) -> Any:
        if check.error is not None:
            raise check.error
        return check.reply


_batcher = _Batcher(_send)


def check_rate_limits(
    *,
    ip: str,
    tenant: str = "",
    events: int = 1,
    read: bool = False,
    cached_under: tuple[str, int] | None = None,
) -> RateDecision:
    """Decide and consume atomically. `tenant` is the request's active tenant, "" for a request
    that has none (it spends the anonymous window, not the tenants' one). `read`: a GET, which
    also spends the tenant's read bucket. `cached_under` (version key, version): `tenant` comes
    from a lookup cached under that version of the API-key cache; if the version moved on, the
    decision is `stale` (nothing spent) and carries the current version. Raises
    redis.RedisError when the shared state is unreachable."""
    global_limit = settings.RATE_LIMIT_GLOBAL_PER_MINUTE
    if tenant:
        window_key, window_limit, window_scope = "rl:global", global_limit, "global"
        share = settings.RATE_LIMIT_TENANT_SHARE
        share_limit = max(1, math.floor(share * global_limit)) if 0 < share < 1 else 0
        contended_at = settings.RATE_LIMIT_CONTENDED_AT * global_limit
        tenant_rate = settings.RATE_LIMIT_TENANT_EVENTS_PER_SECOND
        read_rate = settings.RATE_LIMIT_TENANT_READS_PER_SECOND if read else 0.0
    else:
        window_key, window_limit = "rl:anonymous", settings.RATE_LIMIT_ANONYMOUS_PER_MINUTE
        window_scope, share_limit, contended_at, tenant_rate, read_rate = "anonymous", 0, 0.0, 0, 0.0
    keys: list[str | bytes] = [f"rl:ip:{rate_limit_subject(ip)}", *_tenant_keys(window_key, tenant)]
    if cached_under is not None:
        keys.append(cached_under[0])
    limits = (
        settings.RATE_LIMIT_PER_IP_CAPACITY,
        settings.RATE_LIMIT_PER_IP_REFILL_PER_SECOND,
        window_limit,
        _WINDOW_SECONDS,
        tenant_rate,
        share_limit,
        contended_at,
        read_rate,
        max(1, settings.RATE_LIMIT_TENANT_READ_BURST),
    )
    head, tail = _limits_argv(limits, window_scope)
    args = [*head, b"%d" % max(1, events), *tail]
    if cached_under is not None:
        args.append(b"%d" % cached_under[1])
    reply = _batcher.decide(_Check(keys=keys, args=args))
    if reply[0] == _STALE:
        current = reply[5]
        return RateDecision(
            allowed=False,
            limited_by="",
            retry_after_seconds=0,
            limit=settings.RATE_LIMIT_PER_IP_CAPACITY,
            remaining=0,
            reset_seconds=0,
            stale=True,
            key_version=int(current) if current else None,
        )
    allowed, limited_by, retry_after, remaining, reset = reply
    return RateDecision(
        allowed=bool(allowed),
        limited_by=limited_by.decode() if isinstance(limited_by, bytes) else str(limited_by),
        retry_after_seconds=max(1, math.ceil(float(retry_after))),
        limit=settings.RATE_LIMIT_PER_IP_CAPACITY,
        remaining=max(0, math.floor(float(remaining))),
        reset_seconds=max(0, math.ceil(float(reset))),
    )
