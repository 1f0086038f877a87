"""The embedded default's SQLite connection settings (cloudscale_project/settings.py), as every
process's connection has them: what docs/decisions.md, "SQLite's durability and checkpoints", measured."""

from __future__ import annotations

from contextlib import closing

import pytest
from django.conf import settings
from django.db import connection

pytestmark = pytest.mark.django_db


def test_every_connection_syncs_each_commit_and_checkpoints_after_the_configured_log_size() -> None:
    if connection.vendor != "sqlite":
        pytest.skip(f"SQLite settings; this run's database is {connection.vendor}")
    # A connection as any process opens one: Django runs the init command on it.
    with closing(connection.get_new_connection(connection.get_connection_params())) as fresh:

        def pragma(name: str) -> object:
            return fresh.execute(f"PRAGMA {name}").fetchone()[0]

        assert pragma("journal_mode") == "wal"
        assert pragma("synchronous") == 2  # FULL: every commit is on disk before it returns
        assert pragma("wal_autocheckpoint") == settings.SQLITE_WAL_AUTOCHECKPOINT_PAGES == 20_000
        assert pragma("journal_size_limit") == settings.SQLITE_WAL_SIZE_LIMIT_BYTES
        # The trimmed log still holds one checkpoint's worth of pages.
        page_size = pragma("page_size")
        assert isinstance(page_size, int)
        assert settings.SQLITE_WAL_AUTOCHECKPOINT_PAGES * page_size <= settings.SQLITE_WAL_SIZE_LIMIT_BYTES
