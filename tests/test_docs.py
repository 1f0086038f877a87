"""docs/api.md and the code name the same settings, metrics and commands: a doc that disagrees is a defect."""

from __future__ import annotations

import re
from pathlib import Path

from django.core.management import get_commands

from cloudscale_project.metrics import (
    EVENTS_INGESTED,
    INGESTION_DURATION,
    PLATFORM_COUNTERS,
    PLATFORM_GAUGES,
    PLATFORM_LABELED_GAUGES,
    RATE_LIMIT_REJECTIONS,
)

ROOT = Path(__file__).resolve().parent.parent
API_DOC = (ROOT / "docs" / "api.md").read_text()
# Where settings are read: the settings module, commands, the gunicorn config, the test harness.
SOURCES = [path for folder in ("cloudscale_project", "tenants", "events", "fraud", "scoring", "carts", "ops", "benchmarks", "deploy", "tests")
           for path in (ROOT / folder).rglob("*.py")]  # fmt: skip
CODE = "\n".join(path.read_text() for path in SOURCES)
COMPOSE = (ROOT / "docker-compose.yml").read_text()


def _section(title: str) -> str:
    match = re.search(rf"^## {re.escape(title)}\n(.*?)(?=^## |\Z)", API_DOC, flags=re.MULTILINE | re.DOTALL)
    assert match, f"docs/api.md has no section {title!r}"
    return match.group(1)


def test_it_documents_every_setting_the_settings_module_reads() -> None:
    settings_source = (ROOT / "cloudscale_project" / "settings.py").read_text()
    read = set(re.findall(r"env_(?:str|int|float|bool|list)\(\s*\"([A-Z_]+)\"", settings_source))
    assert read, "no env_* calls found in settings.py"
    undocumented = sorted(name for name in read if f"`{name}`" not in API_DOC and f"{name}`" not in API_DOC)
    assert undocumented == [], f"settings read in settings.py but missing from docs/api.md: {undocumented}"


def test_it_documents_no_setting_that_nothing_reads() -> None:
    documented = set(
        re.findall(r"`(CLOUDSCALE_[A-Z_]+|COSMOS_[A-Z_]+|DJANGO_[A-Z_]+)`", _section("Settings"))
    )
    unread = sorted(name for name in documented if f'"{name}"' not in CODE and f"${{{name}" not in COMPOSE)
    assert unread == [], f"docs/api.md names settings no code reads: {unread}"


def test_it_documents_exactly_the_metrics_the_code_exports() -> None:
    exported = {
        EVENTS_INGESTED._name + "_total",
        INGESTION_DURATION._name,
        RATE_LIMIT_REJECTIONS._name + "_total",
        *PLATFORM_COUNTERS,
        *PLATFORM_GAUGES,
        *PLATFORM_LABELED_GAUGES,
    }
    documented = set(re.findall(r"^\| `(cloudscale_[a-z_]+)`", _section("Metrics"), flags=re.MULTILINE))
    assert documented == exported


def test_it_documents_only_management_commands_that_exist() -> None:
    named = set(re.findall(r"^### `manage\.py ([a-z_]+)`", API_DOC, flags=re.MULTILINE))
    named |= set(re.findall(r"`manage\.py ([a-z_]+)`", API_DOC))
    assert named >= {"tenant", "dlq", "loadgen", "provision_cosmos", "provision_servicebus", "runplatform"}
    missing = sorted(named - set(get_commands()))
    assert missing == [], f"docs/api.md names management commands that do not exist: {missing}"


def test_the_docs_cite_no_issue_numbers() -> None:
    """The repository explains itself: a doc names its sections and files, never a tracker's issue."""
    docs = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]
    cited = [
        f"{path.name}: {match.group(0)!r}"
        for path in docs
        for match in re.finditer(
            r"(?<![\w&/])#\d+\b|\bissues?\s+#?\d+\b", path.read_text(), flags=re.IGNORECASE
        )
    ]
    assert cited == []
