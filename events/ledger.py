"""The per-tenant loss ledger (docs/api.md, "Loss ledger"): proof that nothing accepted was lost.

Per hour of `received_at`:
- received, accepted, duplicate, rejected, rate_limited: counted by the API where it decides, in
  Redis, `received` and the outcome in one atomic write so the two never disagree;
- stored: counted from the event store itself (idempotent by construction: a redelivered event is
  one row/item);
- dead_lettered: counted from the dead-letter table (pending or discarded, not requeued);
- pending = accepted - stored - dead_lettered: accepted events still in the broker or a retry.

`accepted` is counted per event id, when its publish is confirmed (`ledger_commit_all`): a confirm
that could not be written is kept and written late (`LateCommits`), and a confirm of an id that
is already confirmed counts it as a duplicate, so every event that reaches the store was counted
as accepted exactly once. The report never reaches before the retention window: older hours have
lost their stored events to the purge, not to the pipeline.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta

import redis
from django.conf import settings

from cloudscale_project.publish_receipts import PUBLISHED_TTL_SECONDS
from cloudscale_project.state import STATE_ERRORS, state_redis
from cloudscale_project.timeutil import hour_floor, isoformat_z, utcnow
from events.dedup import RESERVATION_SECONDS, release_event_ids, seen_key
from events.stores.base import StoreUnavailable

logger = logging.getLogger(__name__)

API_OUTCOMES = ("accepted", "duplicate", "rejected", "rate_limited")
FIELDS = ("received", *API_OUTCOMES, "stored", "dead_lettered", "pending")
# Ledger hours are kept this much longer than the events themselves: an hour whose API counts
# expired while its stored events remain would show stored > accepted.
_TTL_MARGIN = timedelta(days=2)
_LAST_HOUR = datetime.max.replace(minute=0, second=0, microsecond=0, tzinfo=UTC)
_ONE_HOUR = timedelta(hours=1)
DEFAULT_RANGE = timedelta(hours=25)
# Seconds a client is asked to wait when the shared state cannot be read.
_READ_RETRY_AFTER_SECONDS = 5.0


_client = state_redis  # one client (and connection pool) per process


def _key(tenant: str, hour: datetime) -> str:
    return f"ledger:{tenant}:{hour.strftime('%Y-%m-%dT%H')}"


def _ttl_seconds() -> int:
    return int((timedelta(days=settings.EVENT_RETENTION_DAYS) + _TTL_MARGIN).total_seconds())


def ledger_record(
    *, tenant: str, received_at: datetime, counts: dict[str, int], pipe: redis.client.Pipeline | None = None
) -> None:
    """Count one request's events: each lands in exactly one API outcome.

    With `pipe` (a MULTI pipeline on REDIS_URL) the counts are only queued on it, so the caller
    can commit them together with other state (the API confirms its dedup ids in the same MULTI).
    """
    unknown = set(counts) - set(API_OUTCOMES)
    if unknown:
        raise ValueError(f"not API outcomes: {sorted(unknown)}")
    total = sum(counts.values())
    if total == 0:
        return
    key = _key(tenant, hour_floor(received_at))
    own = pipe is None
    pipe = _client().pipeline(transaction=True) if pipe is None else pipe
    pipe.hincrby(key, "received", total)
    for outcome, n in counts.items():
        if n:
            pipe.hincrby(key, outcome, n)
    pipe.expire(key, _ttl_seconds())
    if own:
        pipe.execute()


# Confirms the published ids and counts the requests, atomically. ARGV[1] and ARGV[2] are the
# dedup and ledger TTLs; then three values per request: how many ids it published, its duplicate
# and its rejected events. KEYS hold per request its ledger hour, then its ids' dedup keys. An id
# counts as accepted only if this call confirms it; one that is already confirmed (a late commit
# and the client's retry both published it) counts as a duplicate, so an event is accepted once
# however many requests carried it.
_COMMIT_SCRIPT = """
local k = 1
local hours, counts = {}, {}  -- the requests' counts summed by ledger hour: one write each
for j = 3, #ARGV, 3 do
  local hour, ids = KEYS[k], tonumber(ARGV[j])
  local accepted, repeated = 0, 0
  for i = k + 1, k + ids do
    -- SET ... GET: the id's earlier value and its confirmation in one command
    if redis.call('SET', KEYS[i], '1', 'EX', ARGV[1], 'GET') == '1' then
      repeated = repeated + 1
    else
      accepted = accepted + 1
    end
  end
  k = k + ids + 1
  local duplicate = repeated + tonumber(ARGV[j + 1])
  local rejected = tonumber(ARGV[j + 2])
  if accepted + duplicate + rejected > 0 then
    local sums = counts[hour]
    if sums == nil then
      sums = {0, 0, 0}
      counts[hour] = sums
      hours[#hours + 1] = hour
    end
    sums[1], sums[2], sums[3] = sums[1] + accepted, sums[2] + duplicate, sums[3] + rejected
  end
end
for _, hour in ipairs(hours) do
  local sums = counts[hour]
  redis.call('HINCRBY', hour, 'received', sums[1] + sums[2] + sums[3])
  if sums[1] > 0 then redis.call('HINCRBY', hour, 'accepted', sums[1]) end
  if sums[2] > 0 then redis.call('HINCRBY', hour, 'duplicate', sums[2]) end
  if sums[3] > 0 then redis.call('HINCRBY', hour, 'rejected', sums[3]) end
  redis.call('EXPIRE', hour, ARGV[2])
end
return k - 1
"""


@dataclass(frozen=True)
class Commit:
    """What one request must write after its publish: its published ids and its other outcomes."""

    tenant: str
    received_at: datetime
    published_ids: tuple[str, ...]
    duplicate: int
    rejected: int


def ledger_commit_all(commits: Sequence[Commit]) -> None:
    """Confirm the published ids (dedup) and count each request in the ledger, in one atomic step:
    one script call for one request or all the members of a group commit."""
    if not commits:
        return
    keys: list[str] = []
    args: list[int] = [settings.DEDUP_WINDOW_SECONDS, _ttl_seconds()]
    for commit in commits:
        keys.append(_key(commit.tenant, hour_floor(commit.received_at)))
        keys += [seen_key(commit.tenant, event_id) for event_id in commit.published_ids]
        args += [len(commit.published_ids), commit.duplicate, commit.rejected]
    # EVALSHA (the script object loads it after a restart): not the script's text on every request.
    _client().register_script(_COMMIT_SCRIPT)(keys=keys, args=args)


@dataclass(eq=False)
class _Waiting:
    """Commits to write late. With `landed`, their publish's outcome is not known yet either: they
    are written if the broker has the message, else their ids are released and their requests
    counted as refused (`rejected`), as a failed publish's are at once."""

    commits: tuple[Commit, ...]
    landed: Callable[[], bool] | None = None
    since: float = field(default_factory=time.monotonic)
    released: bool = False

    @property
    def events(self) -> int:
        return sum(len(commit.published_ids) for commit in self.commits)


class LateCommits:
    """Commits of published events that could not be written when they were made.

    The events are in the broker and will be stored, so their count must land, or the hour shows
    stored > accepted. A daemon thread retries them until the shared state answers again; the
    client was answered 503 and its retry is refused as in flight until then, after which it is a
    duplicate. Kept in the API process: one that dies with commits still here loses them (logged).

    A publish whose reply was lost waits here too (`add_uncertain`): its ids stay reserved, so the
    client's retries are refused as in flight, until the broker answers whether it has the message
    (its receipt, events.publishing.publish_landed). Then the commit is written, or the ids are
    released and the request counted as refused: either way the ledger counts what happened,
    rather than a second copy that a retry after the reservation would publish.
    """

    # Retry every second, up to every 5 s while the shared state stays away.
    RETRY_SECONDS = 1.0
    MAX_RETRY_SECONDS = 5.0
    # Beyond this many waiting requests the oldest is dropped (logged): memory stays bounded.
    MAX_WAITING = 10_000

    def __init__(self) -> None:
        self._waiting: list[_Waiting] = []
        self._lock = threading.Lock()
        # One flush at a time: a flush that returns 0 means every commit is written, not that
        # another flush (the thread's) holds them half done.
        self._flushing = threading.Lock()
        self._thread: threading.Thread | None = None

    def add(self, commit: Commit) -> None:
        self._add(_Waiting(commits=(commit,)))

    def add_uncertain(self, commits: Sequence[Commit], *, landed: Callable[[], bool]) -> None:
        """Commits of a publish that failed but may have reached the broker; `landed` asks it
        (raising one of STATE_ERRORS while it cannot answer)."""
        self._add(_Waiting(commits=tuple(commits), landed=landed))

    def _add(self, waiting: _Waiting) -> None:
        with self._lock:
            if len(self._waiting) >= self.MAX_WAITING:
                lost = self._waiting.pop(0)
                logger.error(
                    "late-commit queue full; dropped the commit of %d published event(s) of %s",
                    lost.events, lost.commits[0].tenant,
                )  # fmt: skip
            self._waiting.append(waiting)
            if self._thread is None or not self._thread.is_alive():
                self._thread = threading.Thread(target=self._run, name="ledger-late-commits", daemon=True)
                self._thread.start()

    def waiting(self) -> int:
        with self._lock:
            return len(self._waiting)

    def flush(self) -> int:
        """Write every waiting commit that can be written now; return how many are still waiting."""
        with self._flushing:
            return self._flush()

    def _flush(self) -> int:
        with self._lock:
            batch, self._waiting = self._waiting, []
        failed: list[_Waiting] = []
        for waiting in batch:
            if waiting.landed is not None and time.monotonic() - waiting.since > PUBLISHED_TTL_SECONDS:
                # The receipt is gone by now: nothing can tell any more (docs/decisions.md,
                # "The ledger under broker kills: publish receipts", "What is left").
                logger.error(
                    "gave up on the uncertain publish of %d event(s) of %s: the broker did not answer "
                    "for %d s; they are counted neither as accepted nor as refused",
                    waiting.events, waiting.commits[0].tenant, PUBLISHED_TTL_SECONDS,
                )  # fmt: skip
                continue
            try:
                self._resolve(waiting)
            except STATE_ERRORS:
                failed.append(waiting)
        with self._lock:
            self._waiting[:0] = failed
            return len(self._waiting)

    def _resolve(self, waiting: _Waiting) -> None:
        tenant = waiting.commits[0].tenant
        if waiting.landed is None or waiting.landed():
            ledger_commit_all(waiting.commits)
            logger.info("late commit of %d published event(s) of %s written", waiting.events, tenant)
            return
        if not waiting.released:
            # Only while the reservations are surely still this request's: after they expired, a
            # retry may have reserved the ids anew, and deleting its reservation would be wrong.
            # A request reserves after it was received, so its age from `received_at` errs long.
            oldest = min(commit.received_at for commit in waiting.commits)
            if (utcnow() - oldest).total_seconds() < RESERVATION_SECONDS - 5:
                release_event_ids(
                    tenant=tenant, event_ids=[i for commit in waiting.commits for i in commit.published_ids]
                )
            waiting.released = True
        pipe = _client().pipeline(transaction=True)
        for commit in waiting.commits:
            refused = {"rejected": len(commit.published_ids) + commit.duplicate + commit.rejected}
            ledger_record(tenant=tenant, received_at=commit.received_at, counts=refused, pipe=pipe)
        pipe.execute()
        logger.info(
            "the broker does not have the %d event(s) of %s whose publish failed: released, "
            "counted as refused",
            waiting.events, tenant,
        )  # fmt: skip

    def _run(self) -> None:
        delay = self.RETRY_SECONDS
        while True:
            time.sleep(delay)
            if self.flush() == 0:
                with self._lock:
                    if not self._waiting:
                        self._thread = None
                        return
            delay = min(delay * 2, self.MAX_RETRY_SECONDS)


late_commits = LateCommits()  # one per process


def _hours(since: datetime, until: datetime) -> Iterator[datetime]:
    hour = hour_floor(since)
    while hour < until:
        yield hour
        if hour >= _LAST_HOUR:
            return
        hour += timedelta(hours=1)


def retention_start(now: datetime) -> datetime:
    """The first whole hour whose events the retention purge has not touched."""
    oldest = now - timedelta(days=settings.EVENT_RETENTION_DAYS)
    start = hour_floor(oldest)
    return start if start == oldest else start + _ONE_HOUR


def ledger_window(
    *, since: datetime | None, until: datetime | None, now: datetime
) -> tuple[datetime, datetime]:
    """[since, until) of a report: by default the last 25 hours; never before the retention window
    (the purge, not the pipeline, took those events) nor after the current hour (nothing is
    received in the future), so at most the retention window's hours. Empty when reversed."""
    end = hour_floor(now) + _ONE_HOUR
    until = end if until is None else min(until, end)
    if since is None:
        try:
            since = until - DEFAULT_RANGE
        except OverflowError:  # `until` in year 1: nothing can be before it
            since = until
    return max(since, retention_start(now)), until


def ledger_report(*, tenant: str, since: datetime, until: datetime) -> dict[str, object]:
    """Hours with any activity in [since, until), and the totals over them.

    Raises StoreUnavailable when the shared state (the API's counts) cannot be read.
    """
    from events.deadletters import dead_lettered_by_hour
    from events.stores import get_event_store

    hours = list(_hours(since, until)) if since < until else []
    pipe = _client().pipeline(transaction=False)
    for hour in hours:
        pipe.hgetall(_key(tenant, hour))
    try:
        api_counts = pipe.execute()
    except STATE_ERRORS as exc:
        logger.warning("ledger of %s: shared state unavailable: %s", tenant, exc)
        raise StoreUnavailable("shared state unavailable", retry_after=_READ_RETRY_AFTER_SECONDS) from exc
    start = hour_floor(since)
    end = until if not hours or hours[-1] >= _LAST_HOUR else hours[-1] + timedelta(hours=1)
    stored = {hour_floor(h): n for h, n in get_event_store().count_stored_by_hour(
        tenant=tenant, since=start, until=end).items()}  # fmt: skip
    dead = {hour_floor(h): n for h, n in dead_lettered_by_hour(tenant=tenant, since=start, until=end).items()}

    results: list[dict[str, object]] = []
    totals = dict.fromkeys(FIELDS, 0)
    for hour, raw in zip(hours, api_counts, strict=True):
        row = {name: int(raw.get(name.encode(), 0)) for name in ("received", *API_OUTCOMES)}
        row["stored"] = stored.get(hour, 0)
        row["dead_lettered"] = dead.get(hour, 0)
        row["pending"] = row["accepted"] - row["stored"] - row["dead_lettered"]
        if any(row.values()):
            for name in FIELDS:
                totals[name] += row[name]
            results.append({"hour": isoformat_z(hour).replace(".000000Z", "Z"), **row})
    return {"results": results, "totals": totals}
