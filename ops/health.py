"""Readiness checks: can this process reach the database, the broker, the shared state and the
event store?"""

from __future__ import annotations

import logging
from collections.abc import Callable

from django.db import connection

from cloudscale_project.celery import app
from cloudscale_project.state import state_redis
from events.stores import get_event_store

logger = logging.getLogger(__name__)

_BROKER_TIMEOUT_SECONDS = 2


def check_database() -> None:
    with connection.cursor() as cursor:
        cursor.execute("SELECT 1")


def check_broker() -> None:
    with app.connection_for_write() as conn:
        conn.ensure_connection(max_retries=1, timeout=_BROKER_TIMEOUT_SECONDS)
        # Some transports connect lazily (Service Bus): touching the default channel makes
        # the check real instead of "connected" by assumption.
        conn.default_channel  # noqa: B018


def check_shared_state() -> None:
    # Rate limits, dedup and the ledger live there: every /api/events* call fails without it.
    state_redis().ping()


def check_event_store() -> None:
    get_event_store().ping()


CHECKS: dict[str, Callable[[], None]] = {
    "database": check_database,
    "broker": check_broker,
    "shared_state": check_shared_state,
    "event_store": check_event_store,
}
UNAVAILABLE = "unavailable"


def readiness() -> dict[str, str]:
    """{"database": "ok", "broker": "unavailable", …}: every check runs, so one report shows all.

    The probe is public: why a check failed (hosts, ports, driver messages) goes to the log only.
    """
    report: dict[str, str] = {}
    for name, check in CHECKS.items():
        try:
            check()
        except Exception as exc:
            logger.warning("readiness: %s unavailable: %s: %s", name, type(exc).__name__, exc)
            report[name] = UNAVAILABLE
        else:
            report[name] = "ok"
    return report
