"""Logging plumbing: every JSON log line carries the correlation id of the work in hand."""

from __future__ import annotations

import logging

from cloudscale_project.correlation import get_correlation_id


class CorrelationIdFilter(logging.Filter):
    def filter(self, record: logging.LogRecord) -> bool:
        if not getattr(record, "correlation_id", None):
            record.correlation_id = get_correlation_id() or None
        return True
