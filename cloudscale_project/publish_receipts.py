"""The broker's receipt of a publish on Redis: a key written in the same MULTI as the message.

A publisher whose reply was lost (the server died after applying the publish, before answering)
cannot tell from its own side whether the broker has the message. The Redis transport
(ops/redis_transport.py) writes this key with the message, atomically, so once the server answers
again the publisher can ask (events.publishing.publish_landed) and count the events as accepted or
release them: never a guess (docs/decisions.md, "The ledger under broker kills: publish receipts").
"""

from __future__ import annotations

PUBLISHED_KEY_PREFIX = "_cloudscale.published."
# Long enough for a publisher to ask once the server is back (its resolver retries every few
# seconds); the message itself does not depend on the key.
PUBLISHED_TTL_SECONDS = 600


def published_key(task_id: str) -> str:
    return f"{PUBLISHED_KEY_PREFIX}{task_id}"
