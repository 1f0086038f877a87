"""Test-only fault injection for the event store, outside the production code.

Tests start processes with `CLOUDSCALE_EVENT_STORE=tests.faults.stores.FaultSwitchStore` and
`CLOUDSCALE_TEST_STORE_FAULT_FILE=<path>`: the ORM store behind a switch file. While the file exists,
writes and pings raise `StoreUnavailable` (a store outage as the pipeline sees it: transient, retried
with backoff); reads pass through, so the loss ledger can still be computed. The fault suite creates
and removes the file to take "the store" down for a while under live traffic.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from datetime import datetime
from typing import cast

from events.stores import build_event_store
from events.stores.base import Event, EventPage, EventStore, NewEventsHook, StoreUnavailable, StoreWithSteps

# What a throttled or unreachable store would suggest; the fault suite's outage outlasts it.
FAULT_RETRY_AFTER_SECONDS = 1.0


# The environment variable naming the switch file of processes the tests start.
FAULT_FILE_ENV = "CLOUDSCALE_TEST_STORE_FAULT_FILE"
STORE_BACKEND = "tests.faults.stores.FaultSwitchStore"


class FaultSwitchStore:
    """The real store behind a switch file: present = "the store is down"."""

    @classmethod
    def from_settings(cls) -> FaultSwitchStore:
        return cls(build_event_store("orm"), fault_file=os.environ[FAULT_FILE_ENV])

    def __init__(self, inner: EventStore, *, fault_file: str) -> None:
        self.inner = inner
        self.fault_file = fault_file
        self.name = inner.name
        # The ORM store runs scoring inside its write's transaction; the fault suite tests that path.
        self.runs_steps_in_transaction = getattr(inner, "runs_steps_in_transaction", False)

    def _check(self) -> None:
        if os.path.exists(self.fault_file):
            raise StoreUnavailable(
                f"injected store fault ({self.fault_file} exists)", retry_after=FAULT_RETRY_AFTER_SECONDS
            )

    def write_many(self, events: Sequence[Event], *, then: NewEventsHook | None = None) -> set[str]:
        self._check()
        if then is None:
            return self.inner.write_many(events)
        return cast(StoreWithSteps, self.inner).write_many(events, then=then)

    def ping(self) -> None:
        self._check()
        self.inner.ping()

    def get(self, *, tenant: str, event_id: str) -> Event | None:
        return self.inner.get(tenant=tenant, event_id=event_id)

    def query(
        self,
        *,
        tenant: str,
        event_type: str | None = None,
        user_id: str | None = None,
        since: datetime | None = None,
        until: datetime | None = None,
        limit: int = 100,
        cursor: str | None = None,
    ) -> EventPage:
        return self.inner.query(
            tenant=tenant,
            event_type=event_type,
            user_id=user_id,
            since=since,
            until=until,
            limit=limit,
            cursor=cursor,
        )

    def count_stored_by_hour(self, *, tenant: str, since: datetime, until: datetime) -> dict[datetime, int]:
        return self.inner.count_stored_by_hour(tenant=tenant, since=since, until=until)

    def purge_expired(self, *, older_than: datetime) -> int:
        return self.inner.purge_expired(older_than=older_than)
