"""The fault suite's counts (sent / 202 / stored / duplicates / lost per scenario) in the terminal summary."""

from __future__ import annotations

import pytest

from tests.faults.harness import SUMMARY


def pytest_terminal_summary(terminalreporter: pytest.TerminalReporter) -> None:
    if SUMMARY:
        terminalreporter.section("fault suite")
        for line in SUMMARY:
            terminalreporter.write_line(line)
