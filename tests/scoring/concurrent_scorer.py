"""A scoring worker process for the concurrency test (run with `python -m`, not collected by pytest).

argv: ready-file go-file first last [how] — scores events [first, last) of `shared_events()` in
batches of BATCH once the go-file appears, so two such processes hit the same user at the same
moment. `how`: `markers` (the step called, as before a store that writes elsewhere; the default) or
`stored` (the ORM store's write with scoring inside its transaction, as the pipeline runs it there).
"""

from __future__ import annotations

import os
import sys
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

BATCH = 10
USER = "shared-user"
TYPES = [
    "page_view",
    "click",
    "search",
    "add_to_cart",
    "remove_from_cart",
    "purchase",
    "login",
    "login_failed",
]
T0 = datetime(2026, 11, 20, 9, 0, tzinfo=UTC)


def shared_events(first: int, last: int) -> list[dict[str, Any]]:
    from cloudscale_project.timeutil import isoformat_z

    return [
        {
            "event_id": f"evt-{i:05d}",
            "event_type": TYPES[i % len(TYPES)],
            "user_id": USER,
            "timestamp": isoformat_z(T0 + timedelta(minutes=7 * i)),
            "tenant": "acme",
        }
        for i in range(first, last)
    ]


def main() -> None:
    ready, go, first, last = Path(sys.argv[1]), Path(sys.argv[2]), int(sys.argv[3]), int(sys.argv[4])
    os.environ.setdefault("DJANGO_SETTINGS_MODULE", "tests.settings")
    import django

    django.setup()
    from scoring.services import score_apply_batch

    how = sys.argv[5] if len(sys.argv) > 5 else "markers"
    score = score_apply_batch if how == "markers" else _store_and_score
    events = shared_events(first, last)
    ready.touch()
    deadline = time.monotonic() + 60
    while not go.exists():
        if time.monotonic() > deadline:
            raise SystemExit("no go signal")
        time.sleep(0.005)
    for start in range(0, len(events), BATCH):
        score(tenant="acme", events=events[start : start + BATCH])


def _store_and_score(*, tenant: str, events: list[dict[str, Any]]) -> None:
    from events.stores.orm import OrmEventStore
    from scoring.services import score_apply_batch
    from tests.events.pipeline_support import enriched_event

    stored = [enriched_event(**event) for event in events]  # the events name their tenant
    OrmEventStore().write_many(
        stored, then=lambda new: score_apply_batch.apply_stored(tenant=tenant, events=new)
    )


if __name__ == "__main__":
    main()
