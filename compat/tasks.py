from __future__ import annotations

from celery import shared_task

from compat.services import warnings_purge_expired


@shared_task(name="compat.purge_expired_warnings", acks_late=True)
def purge_expired_warnings() -> int:
    return warnings_purge_expired()
