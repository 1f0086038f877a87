"""How often a batch message was handed to a worker that never finished it.

A batch that kills its worker (a crash in native code, the out-of-memory killer, the hard time
limit) comes back at once (`reject_on_worker_lost`) or after the visibility timeout, and would kill
the next worker too, forever: no attempt ever ends, so the retry count never moves. Each delivery is
counted in the shared state before the batch runs, keyed by task id and retry number (a retry is a
new message with a count of its own), and the count is deleted when the task body returns, however
it returns. A count that is still there when the message comes again means the previous deliveries
died with their worker.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence

from cloudscale_project.state import STATE_ERRORS, state_redis

logger = logging.getLogger(__name__)

_KEY = "cloudscale:deliveries:{task_id}:{retries}"
# Only messages in flight have a key. A message requeued behind a long backlog must still find its
# count when it comes back, so the key outlives any plausible wait in the queue.
COUNT_TTL_SECONDS = 7 * 24 * 3600


def _key(task_id: str, retries: int) -> str:
    return _KEY.format(task_id=task_id, retries=retries)


# Counts of finished deliveries of this process, deleted with the next count (one round trip).
_uncleared: set[str] = set()


def delivery_started(*, task_id: str, retries: int) -> int | None:
    """Count this delivery; the number of deliveries so far, or None if the shared state is away
    (then the batch simply runs: its own steps will meet the same outage and retry)."""
    return deliveries_started([(task_id, retries)])[0]


def deliveries_started(deliveries: Sequence[tuple[str, int]]) -> list[int | None]:
    """`delivery_started` for several messages of one job (task id, retries each), in one round
    trip; the counts in order, or Nones if the shared state is away."""
    keys = [_key(task_id, retries) for task_id, retries in deliveries]
    leftovers = sorted(_uncleared)  # these very keys too: their last delivery finished, unlost
    try:
        pipe = state_redis().pipeline(transaction=True)
        if leftovers:
            pipe.delete(*leftovers)
        for key in keys:
            pipe.incr(key)
            pipe.expire(key, COUNT_TTL_SECONDS)
        results = pipe.execute()
    except STATE_ERRORS:
        logger.warning("could not count the delivery of %d message(s); running uncounted", len(keys))
        return [None] * len(keys)
    _uncleared.difference_update(leftovers)
    counts = results[1:] if leftovers else results
    return [int(count) for count in counts[0::2]]


def delivery_finished(*, task_id: str, retries: int) -> None:
    """The delivery ended (however the body returned): its count goes with the next delivery's.

    Deleted in the same round trip as the next count (`delivery_started`), not in one of its own:
    a Redis round trip per message was a noticeable share of a small message's worker time. Until
    then the count of a finished delivery stays behind; were its message to come back meanwhile (an
    ack lost with the connection, to another process), that is one more loss than there was, far
    from WORKER_LOSSES_MAX unless it keeps happening. An idle process's last count stays until its
    TTL, or until the process stops (`deliveries_flush`)."""
    _uncleared.add(_key(task_id, retries))


def deliveries_flush() -> None:
    """Delete the counts of finished deliveries now (a worker process that is stopping)."""
    leftovers = sorted(_uncleared)
    if not leftovers:
        return
    try:
        state_redis().delete(*leftovers)
    except STATE_ERRORS:
        logger.warning("could not clear %d delivery count(s) of finished deliveries", len(leftovers))
        return
    _uncleared.difference_update(leftovers)
