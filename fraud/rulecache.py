"""Each tenant's fraud rule settings, cached per process and invalidated exactly.

The fraud step reads them for every batch, and the database join was about a fifth of a worker's
CPU per single-event message. Every write of a `FraudRuleSetting` (admin form, list edit, delete
action, any ORM path: fraud/models.py) bumps a version in the shared-state Redis at once and after
its commit, so every worker runs its next batch with the edit (cloudscale_project/versioned_cache.py).
"""

from __future__ import annotations

from cloudscale_project.versioned_cache import VersionedCache
from fraud.rules import Rule, RuleConfig

VERSION_KEY = "cloudscale:fraud:rule-settings:version"
# A backstop for a version bump lost while Redis was down, not the invalidation mechanism.
TTL_SECONDS = 60.0
# Entries kept per process (one per tenant); past it the cache starts over.
MAX_ENTRIES = 10_000

rule_configs_cache: VersionedCache[str, dict[Rule, RuleConfig]] = VersionedCache(
    VERSION_KEY, ttl_seconds=TTL_SECONDS, max_entries=MAX_ENTRIES
)


def rule_settings_changed() -> None:
    """Call after any change to a tenant's rule settings: every process drops its cached ones."""
    rule_configs_cache.changed()
