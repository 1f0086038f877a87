"""The browser fixtures (Chromium, a real gunicorn, a logged-in admin tab) for every browser test module."""

from __future__ import annotations

from tests.browser.test_admin_browser import admin, chromium, server

__all__ = ["admin", "chromium", "server"]
