"""Readiness checks: can this process reach the database, the broker and the event store?"""

from __future__ import annotations

from collections.abc import Callable

from django.db import connection

from cloudscale_project.celery import app
from events.stores import get_event_store

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


def check_event_store() -> None:
    get_event_store().ping()


CHECKS: dict[str, Callable[[], None]] = {
    "database": check_database,
    "broker": check_broker,
    "event_store": check_event_store,
}


def readiness() -> dict[str, str]:
    """{"database": "ok", "broker": "unavailable: …", …}: every check runs, so one report shows all."""
    report: dict[str, str] = {}
    for name, check in CHECKS.items():
        try:
            check()
        except Exception as exc:
            report[name] = f"unavailable: {type(exc).__name__}: {exc}"[:300]
        else:
            report[name] = "ok"
    return report
