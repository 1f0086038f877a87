"""Operational records operators review in admin."""

from __future__ import annotations

from django.db import models


class ConcurrencyChange(models.Model):
    """One change of the worker concurrency target decided by the backpressure sampler.

    The policy: docs/api.md, "Backpressure".
    """

    changed_at = models.DateTimeField(db_index=True)
    queue_depth = models.PositiveBigIntegerField(help_text="Messages waiting when the change was decided.")
    old_target = models.PositiveIntegerField(null=True, blank=True, help_text="Empty for the first target.")
    new_target = models.PositiveIntegerField()
    reason = models.CharField(max_length=200)
    broadcast = models.BooleanField(
        default=False, help_text="Also sent to workers by remote control (not on Service Bus)."
    )

    class Meta:
        ordering = ["-changed_at", "-id"]

    def __str__(self) -> str:
        return f"{self.old_target or '-'} → {self.new_target} at depth {self.queue_depth}"
