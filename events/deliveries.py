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

from cloudscale_project.state import STATE_ERRORS, state_redis

logger = logging.getLogger(__name__)

_KEY = "cloudscale:deliveries:{task_id}:{retries}"
# Only messages in flight have a key. A message requeued behind a long backlog must still find its
# count when it comes back, so the key outlives any plausible wait in the queue.
COUNT_TTL_SECONDS = 7 * 24 * 3600


def _key(task_id: str, retries: int) -> str:
    return _KEY.format(task_id=task_id, retries=retries)


# Counts of finished deliveries this process could not delete (the shared state was away): deleted
# with the next count, usually long before the message (whose ack failed the same way) comes back.
_uncleared: set[str] = set()


def delivery_started(*, task_id: str, retries: int) -> int | None:
    """Count this delivery; the number of deliveries so far, or None if the shared state is away
    (then the batch simply runs: its own steps will meet the same outage and retry)."""
    key = _key(task_id, retries)
    leftovers = sorted(_uncleared)  # this very key too: its last delivery finished, it was not lost
    try:
        pipe = state_redis().pipeline(transaction=True)
        if leftovers:
            pipe.delete(*leftovers)
        pipe.incr(key)
        pipe.expire(key, COUNT_TTL_SECONDS)
        results = pipe.execute()
    except STATE_ERRORS:
        logger.warning("could not count the delivery of task %s; running it uncounted", task_id)
        return None
    _uncleared.difference_update(leftovers)
    return int(results[-2])


def delivery_finished(*, task_id: str, retries: int) -> None:
    key = _key(task_id, retries)
    try:
        state_redis().delete(key)
    except STATE_ERRORS:
        # Left behind, the count would make a redelivery look like a lost worker. Even if it stays
        # through WORKER_LOSSES_MAX such finishes, events already stored are never dead-lettered.
        logger.warning("could not clear the delivery count of task %s; retrying with the next one", task_id)
        _uncleared.add(key)
    else:
        _uncleared.discard(key)
