"""A tenant's rule settings are cached per process, and every edit is seen by the very next batch."""

from __future__ import annotations

from collections.abc import Callable
from contextlib import AbstractContextManager
from typing import Any

import pytest
import redis
from django.db import connection
from django.test import Client
from django.test.utils import CaptureQueriesContext

from fraud.models import FraudAlert, FraudRuleSetting
from fraud.rulecache import VERSION_KEY, rule_configs_cache
from fraud.rules import Rule, RuleConfig, default_configs
from fraud.selectors import fraud_rule_configs
from fraud.services import fraud_evaluate_batch
from tenants.models import Tenant
from tests.conftest import Actor
from tests.fraud.test_services import burst

pytestmark = [pytest.mark.django_db, pytest.mark.core]

PURCHASE = Rule.PURCHASE_VELOCITY
CHANGELIST = "/admin/fraud/fraudrulesetting/"


def threshold(tenant: str = "acme") -> int:
    return fraud_rule_configs(tenant=tenant)[PURCHASE].threshold


def queries_of(read: Callable[[], object]) -> int:
    with CaptureQueriesContext(connection) as captured:
        read()
    return len(captured.captured_queries)


@pytest.fixture
def setting(acme: Actor) -> FraudRuleSetting:
    return FraudRuleSetting.objects.create(
        tenant=Tenant.objects.get(slug="acme"), rule=PURCHASE, threshold=5, window_seconds=600
    )


def test_a_repeated_read_runs_no_query(setting: FraudRuleSetting, django_assert_num_queries: Any) -> None:
    with django_assert_num_queries(1):
        assert threshold() == 5
    with django_assert_num_queries(0):
        configs = fraud_rule_configs(tenant="acme")
    assert configs[PURCHASE] == RuleConfig(PURCHASE, 5, 600, True)
    assert configs[Rule.LOGIN_FAILED_VELOCITY] == default_configs()[Rule.LOGIN_FAILED_VELOCITY]


def test_a_caller_cannot_change_the_cached_settings(setting: FraudRuleSetting) -> None:
    fraud_rule_configs(tenant="acme").clear()
    assert threshold() == 5


def test_tenants_are_cached_apart(setting: FraudRuleSetting, globex: Actor) -> None:
    assert threshold("acme") == 5
    assert threshold("globex") == default_configs()[PURCHASE].threshold


def test_a_threshold_edited_in_the_admin_list_is_used_by_the_next_batch(
    admin_client: Client, setting: FraudRuleSetting
) -> None:
    batch = burst("purchase", 3)
    fraud_evaluate_batch(tenant="acme", events=batch)
    assert queries_of(lambda: fraud_evaluate_batch(tenant="acme", events=[])) == 0  # cached
    response = admin_client.post(
        CHANGELIST,
        {
            "form-TOTAL_FORMS": "1",
            "form-INITIAL_FORMS": "1",
            "form-MIN_NUM_FORMS": "0",
            "form-MAX_NUM_FORMS": "1000",
            "form-0-id": str(setting.pk),
            "form-0-threshold": "1",
            "form-0-window_seconds": "600",
            "form-0-enabled": "on",
            "_save": "Save",
        },
    )
    assert response.status_code == 302, response.content.decode()[:2000]
    assert FraudAlert.objects.count() == 0
    fraud_evaluate_batch(tenant="acme", events=batch)  # the same three again: 3 > 1
    assert FraudAlert.objects.get().threshold == 1


def test_a_rule_disabled_in_the_admin_form_is_not_run_by_the_next_batch(
    admin_client: Client, setting: FraudRuleSetting
) -> None:
    assert fraud_rule_configs(tenant="acme")[PURCHASE].enabled is True
    response = admin_client.post(
        f"{CHANGELIST}{setting.pk}/change/",
        {"tenant": str(setting.tenant_id), "rule": PURCHASE.value, "threshold": "1", "window_seconds": "600"},
    )
    assert response.status_code == 302, response.content.decode()[:2000]
    fraud_evaluate_batch(tenant="acme", events=burst("purchase", 4))
    assert FraudAlert.objects.count() == 0
    assert fraud_rule_configs(tenant="acme")[PURCHASE] == RuleConfig(PURCHASE, 1, 600, False)


def test_settings_deleted_by_the_admin_action_give_the_defaults_back(
    admin_client: Client, setting: FraudRuleSetting
) -> None:
    assert threshold() == 5
    response = admin_client.post(
        CHANGELIST, {"action": "delete_selected", "_selected_action": [str(setting.pk)], "post": "yes"}
    )
    assert response.status_code == 302
    assert not FraudRuleSetting.objects.exists()
    assert threshold() == default_configs()[PURCHASE].threshold


def test_a_queryset_update_is_seen_on_the_next_read(setting: FraudRuleSetting) -> None:
    assert threshold() == 5
    FraudRuleSetting.objects.filter(tenant__slug="acme").update(threshold=7)
    assert threshold() == 7


def test_a_change_committed_by_another_process_is_seen(
    setting: FraudRuleSetting, state_redis: redis.Redis
) -> None:
    assert threshold() == 5
    with connection.cursor() as cursor:  # another process: no bump here...
        cursor.execute(f"UPDATE {FraudRuleSetting._meta.db_table} SET threshold = 9")  # noqa: S608
    assert threshold() == 5  # (still cached: nothing said it changed)
    state_redis.incr(VERSION_KEY)  # ...but its bump after commit reaches us
    assert threshold() == 9


def test_the_bump_after_commit_drops_what_was_cached_before_it(
    setting: FraudRuleSetting, django_capture_on_commit_callbacks: Callable[..., AbstractContextManager[Any]]
) -> None:
    old = fraud_rule_configs(tenant="acme")
    with django_capture_on_commit_callbacks(execute=True):
        setting.threshold = 9
        setting.save()
        # Another process, reading the committed (old) row before this commit, caches it now.
        rule_configs_cache.get("acme", lambda: old)
        assert threshold() == 5
    assert threshold() == 9


def test_a_flushed_shared_state_does_not_revive_old_entries(
    setting: FraudRuleSetting, state_redis: redis.Redis
) -> None:
    assert threshold() == 5
    FraudRuleSetting.objects.filter(pk=setting.pk).update(threshold=6)
    assert threshold() == 6  # cached under the bumped version
    with connection.cursor() as cursor:
        cursor.execute(f"UPDATE {FraudRuleSetting._meta.db_table} SET threshold = 2")  # noqa: S608
    read_under = int(state_redis.get(VERSION_KEY) or 0)
    state_redis.flushdb()  # Redis lost its data, and this change's bump with it
    for _ in range(min(read_under, 50)):  # other writers bump; a count restarted at 0 climbs back
        state_redis.incr(VERSION_KEY)
    assert threshold() == 2


def test_without_shared_state_every_read_asks_the_database(
    setting: FraudRuleSetting, shared_state_down: str
) -> None:
    assert queries_of(threshold) == 1
    assert queries_of(threshold) == 1
    setting.threshold = 4
    setting.save()  # the bump fails (logged); the read does not depend on it
    assert threshold() == 4


def test_a_batch_with_cached_settings_reads_no_version_of_its_own(
    setting: FraudRuleSetting, version_reads: list[str]
) -> None:
    """The fraud script checks the version the cached settings were read under (fraud/services.py)."""
    for n in range(3):
        fraud_evaluate_batch(tenant="acme", events=burst("purchase", 2, user=f"u{n}"))
    assert version_reads.count(VERSION_KEY) == 1  # the first batch: nothing cached yet


def _raw_update(sql_set: str, rule: Rule = PURCHASE) -> None:
    """An edit by another process: no bump in this one (the test bumps as that process would)."""
    with connection.cursor() as cursor:
        cursor.execute(
            f"UPDATE {FraudRuleSetting._meta.db_table} SET {sql_set} WHERE rule = %s",  # noqa: S608
            [rule.value],
        )


def test_a_change_by_another_process_is_used_by_the_very_next_batch(
    setting: FraudRuleSetting, state_redis: redis.Redis
) -> None:
    fraud_evaluate_batch(tenant="acme", events=burst("purchase", 3, user="first"))  # cached: 5
    assert FraudAlert.objects.count() == 0
    _raw_update("threshold = 1")
    state_redis.incr(VERSION_KEY)
    fraud_evaluate_batch(tenant="acme", events=burst("purchase", 3, user="second"))
    alert = FraudAlert.objects.get()
    # The bucket's first hit: the second purchase makes 2 > 1.
    assert (alert.subject, alert.threshold, alert.event_count) == ("second", 1, 2)
    # Sent twice (the first time under the old version, which recorded nothing), recorded once.
    assert state_redis.zcard(f"fraud:acme:{PURCHASE.value}:second") == 3


def test_a_rule_enabled_by_another_process_runs_even_when_the_cached_settings_send_nothing(
    acme: Actor, state_redis: redis.Redis
) -> None:
    """With every rule disabled a batch sends no script, so nothing would check the cached
    settings' version there: such a batch reads the version itself."""
    tenant = Tenant.objects.get(slug="acme")
    for rule in Rule:
        FraudRuleSetting.objects.create(
            tenant=tenant, rule=rule, threshold=1, window_seconds=600, enabled=False
        )
    fraud_evaluate_batch(tenant="acme", events=burst("purchase", 3, user="first"))  # cached: all off
    _raw_update("enabled = %s" % ("1" if connection.vendor == "sqlite" else "true"))
    state_redis.incr(VERSION_KEY)
    fraud_evaluate_batch(tenant="acme", events=burst("purchase", 3, user="second"))
    assert FraudAlert.objects.get().subject == "second"
