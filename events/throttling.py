"""Rate limits shared by every API process, decided atomically in Redis by one Lua script.

- per client IP: a token bucket (capacity 100, refilled at 10/s);
- global: a sliding window of 10,000 requests per minute (the weighted two-window counter, O(1));
- optionally per tenant: a token bucket of events per second (cost = events in the request).
A request consumes from every limit only when all of them allow it, so a rejected request never
drains a bucket. The clock is Redis's own (TIME), so API hosts with skewed clocks agree.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from functools import cache

import redis
from django.conf import settings

from cloudscale_project.state import state_redis

_WINDOW_SECONDS = 60

_SCRIPT = """
local t = redis.call('TIME')
local now = tonumber(t[1]) + tonumber(t[2]) / 1e6
local capacity, rate = tonumber(ARGV[1]), tonumber(ARGV[2])
local window_limit, window = tonumber(ARGV[3]), tonumber(ARGV[4])
local tenant_rate, cost = tonumber(ARGV[5]), tonumber(ARGV[6])

local function refill(key, cap, per_second)
  local state = redis.call('HMGET', key, 'tokens', 'ts')
  local tokens = tonumber(state[1]) or cap
  local ts = tonumber(state[2]) or now
  return math.min(cap, tokens + math.max(0, now - ts) * per_second)
end

-- 1. per-IP token bucket
local ip_tokens = refill(KEYS[1], capacity, rate)
local function deny(scope, wait)
  return {0, scope, tostring(wait), tostring(ip_tokens), tostring((capacity - ip_tokens) / rate)}
end
if ip_tokens < 1 then
  return deny('ip', (1 - ip_tokens) / rate)
end

-- 2. global sliding window: this window's count plus the previous one's, weighted by overlap
local current = math.floor(now / window)
local elapsed = now - current * window
local cur_key = KEYS[2] .. ':' .. current
local prev_count = tonumber(redis.call('GET', KEYS[2] .. ':' .. (current - 1))) or 0
local cur_count = tonumber(redis.call('GET', cur_key)) or 0
local estimate = prev_count * (window - elapsed) / window + cur_count
if estimate + 1 > window_limit then
  local wait
  if cur_count + 1 > window_limit then
    wait = window - elapsed
  else
    wait = window * (1 - (window_limit - cur_count - 1) / prev_count) - elapsed
  end
  return deny('global', math.max(wait, 0.001))
end

-- 3. optional per-tenant events-per-second bucket (one second of burst)
local tenant_tokens = 0
if tenant_rate > 0 then
  tenant_tokens = refill(KEYS[3], tenant_rate, tenant_rate)
  -- a request larger than one second of quota passes on a full bucket and leaves a debt
  if tenant_tokens < math.min(cost, tenant_rate) then
    local wait = (math.min(cost, tenant_rate) - tenant_tokens) / tenant_rate
    return deny('tenant', math.max(wait, 0.001))
  end
end

-- every limit allows it: consume
ip_tokens = ip_tokens - 1
redis.call('HSET', KEYS[1], 'tokens', tostring(ip_tokens), 'ts', tostring(now))
redis.call('EXPIRE', KEYS[1], math.ceil(capacity / rate) + 1)
redis.call('INCR', cur_key)
redis.call('EXPIRE', cur_key, window * 2 + 1)
if tenant_rate > 0 then
  redis.call('HSET', KEYS[3], 'tokens', tostring(tenant_tokens - cost), 'ts', tostring(now))
  redis.call('EXPIRE', KEYS[3], 10)
end
return {1, '', '0', tostring(ip_tokens), tostring((capacity - ip_tokens) / rate)}
"""


@dataclass(frozen=True)
class RateDecision:
    allowed: bool
    limited_by: str  # "ip", "global", "tenant" or "" when allowed
    retry_after_seconds: int
    limit: int
    remaining: int
    reset_seconds: int

    def headers(self) -> dict[str, str]:
        """IETF RateLimit-* headers for the per-IP bucket (the limit a client can act on)."""
        return {
            "RateLimit-Limit": str(self.limit),
            "RateLimit-Remaining": str(self.remaining),
            "RateLimit-Reset": str(self.reset_seconds),
        }


_client = state_redis  # one client (and connection pool) per process


@cache
def _script() -> redis.commands.core.Script:
    return _client().register_script(_SCRIPT)


def check_rate_limits(*, ip: str, tenant: str = "", events: int = 1) -> RateDecision:
    """Decide and consume atomically. Raises redis.RedisError when the shared state is unreachable."""
    tenant_rate = settings.RATE_LIMIT_TENANT_EVENTS_PER_SECOND if tenant else 0
    allowed, limited_by, retry_after, remaining, reset = _script()(
        keys=[f"rl:ip:{ip}", "rl:global", f"rl:tenant:{tenant}"],
        args=[
            settings.RATE_LIMIT_PER_IP_CAPACITY,
            settings.RATE_LIMIT_PER_IP_REFILL_PER_SECOND,
            settings.RATE_LIMIT_GLOBAL_PER_MINUTE,
            _WINDOW_SECONDS,
            tenant_rate,
            max(1, events),
        ],
    )
    return RateDecision(
        allowed=bool(allowed),
        limited_by=limited_by.decode() if isinstance(limited_by, bytes) else str(limited_by),
        retry_after_seconds=max(1, math.ceil(float(retry_after))),
        limit=settings.RATE_LIMIT_PER_IP_CAPACITY,
        remaining=max(0, math.floor(float(remaining))),
        reset_seconds=max(0, math.ceil(float(reset))),
    )
