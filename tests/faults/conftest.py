"""The fault suite's counts (sent / 202 / stored / duplicates / lost per scenario) travel in each
scenario's test report, for `tests/conftest.py` to print in the terminal summary."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from tests.conftest import FAULT_SUMMARY_PROPERTY
from tests.faults.harness import SUMMARY


@pytest.fixture(autouse=True)
def _report_the_scenario_counts(request: pytest.FixtureRequest) -> Iterator[None]:
    already = len(SUMMARY)
    yield
    request.node.user_properties.extend((FAULT_SUMMARY_PROPERTY, line) for line in SUMMARY[already:])
