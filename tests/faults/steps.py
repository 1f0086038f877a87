"""Test-only pipeline steps: hold each batch before its first step, or between the store write
and the ack.

Worker processes started with `pause_env(seconds)` run a pause first after the store write, so a
test can kill a worker "mid-batch" and prove that redelivery stores nothing twice; with
`pause_before_steps_env(seconds)` the pause comes before anything is stored. Given `while_file`,
either pauses only while that file exists, so a test can end the pause once its kill has landed
instead of waiting it out for every later batch. `refuse_marked` fails every batch that holds a
marked event: a bug that one event triggers. Production settings never name these: the
pipeline's steps are a setting (docs/architecture.md).
"""

from __future__ import annotations

import os
import time
from collections.abc import Sequence

from django.conf import settings

from events.stores.base import Event

PAUSE_ENV = "CLOUDSCALE_TEST_PAUSE_AFTER_STORE"
PAUSE_BEFORE_ENV = "CLOUDSCALE_TEST_PAUSE_BEFORE_STEPS"
PAUSE_WHILE_ENV = "CLOUDSCALE_TEST_PAUSE_WHILE"


def _pause(variable: str) -> None:
    """Sleep the pause; given a file, only while it exists (the pause ends when it goes)."""
    switch = os.environ.get(PAUSE_WHILE_ENV)
    deadline = time.monotonic() + float(os.environ.get(variable, "0"))
    while time.monotonic() < deadline:
        if switch and not os.path.exists(switch):
            return
        time.sleep(0.05)


REFUSED_MARK = "refuse-me"


def refuse_marked(*, tenant: str, events: Sequence[Event]) -> None:
    """A step that fails any batch holding an event whose user_id is `REFUSED_MARK`: a bug that
    one event triggers."""
    if any(event.get("user_id") == REFUSED_MARK for event in events):
        raise RuntimeError("a step refused a marked event")


def pause_after_store(*, tenant: str, events: Sequence[Event]) -> None:
    _pause(PAUSE_ENV)


def pause_before_steps(*, tenant: str, events: Sequence[Event]) -> None:
    _pause(PAUSE_BEFORE_ENV)


def _while(while_file: object | None) -> dict[str, str]:
    return {PAUSE_WHILE_ENV: str(while_file)} if while_file is not None else {}


def pause_before_steps_env(seconds: float | str, *, while_file: object | None = None) -> dict[str, str]:
    """Environment of a worker whose batches pause `seconds` before their first step."""
    steps = ("tests.faults.steps.pause_before_steps", *settings.PIPELINE_STEPS_BEFORE_STORE)
    return {
        PAUSE_BEFORE_ENV: str(seconds),
        "CLOUDSCALE_PIPELINE_BEFORE_STORE": ",".join(steps),
        **_while(while_file),
    }


def pause_env(seconds: float | str, *, while_file: object | None = None) -> dict[str, str]:
    """Environment of a worker whose batches pause `seconds` after their store write."""
    steps = ("tests.faults.steps.pause_after_store", *settings.PIPELINE_STEPS_AFTER_STORE)
    return {PAUSE_ENV: str(seconds), "CLOUDSCALE_PIPELINE_AFTER_STORE": ",".join(steps), **_while(while_file)}


def store_fault_env(switch_file: object) -> dict[str, str]:
    """Environment of a process whose event store is down while `switch_file` exists."""
    from tests.faults.stores import FAULT_FILE_ENV, STORE_BACKEND

    return {"CLOUDSCALE_EVENT_STORE": STORE_BACKEND, FAULT_FILE_ENV: str(switch_file)}
