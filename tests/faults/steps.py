"""Test-only pipeline step: hold each batch between the store write and the ack.

Worker processes started with `pause_env(seconds)` run this step first after the store write, so a
test can kill a worker "mid-batch" and prove that redelivery stores nothing twice. Production
settings never name it: the pipeline's steps are a setting (docs/architecture.md).
"""

from __future__ import annotations

import os
import time
from collections.abc import Sequence

from django.conf import settings

from events.stores.base import Event

PAUSE_ENV = "CLOUDSCALE_TEST_PAUSE_AFTER_STORE"


def pause_after_store(*, tenant: str, events: Sequence[Event]) -> None:
    time.sleep(float(os.environ.get(PAUSE_ENV, "0")))


def pause_env(seconds: float | str) -> dict[str, str]:
    """Environment of a worker whose batches pause `seconds` after their store write."""
    steps = ("tests.faults.steps.pause_after_store", *settings.PIPELINE_STEPS_AFTER_STORE)
    return {PAUSE_ENV: str(seconds), "CLOUDSCALE_PIPELINE_AFTER_STORE": ",".join(steps)}


def store_fault_env(switch_file: object) -> dict[str, str]:
    """Environment of a process whose event store is down while `switch_file` exists."""
    from tests.faults.stores import FAULT_FILE_ENV, STORE_BACKEND

    return {"CLOUDSCALE_EVENT_STORE": STORE_BACKEND, FAULT_FILE_ENV: str(switch_file)}
