"""Every CloudScale management command's --help ends with ready-to-run examples."""

from __future__ import annotations

import pytest
from django.core.management import call_command, get_commands

pytestmark = [pytest.mark.core]

OUR_APPS = ("events", "fraud", "scoring", "ops", "tenants", "carts", "benchmarks", "compat")


def _our_commands() -> list[str]:
    return sorted(name for name, app in get_commands().items() if app in OUR_APPS)


def test_there_are_commands_to_check() -> None:
    assert {"dlq", "status", "tenant", "runplatform"} <= set(_our_commands())


@pytest.mark.parametrize("name", _our_commands())
def test_its_help_has_an_example(name: str, capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit):
        call_command(name, "--help")
    text = capsys.readouterr().out
    assert "\nexamples:\n" in text, text
    assert f"manage.py {name}" in text.split("\nexamples:\n", 1)[1], text
