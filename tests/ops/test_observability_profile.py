"""docker-compose's `observability` profile: Prometheus with the shipped scrape config and alert rules
(checked by promtool), Grafana with the shipped dashboard and data source provisioned, an
OpenTelemetry collector and Jaeger. Without promtool the promtool tests skip (CI=true: fail)."""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path
from typing import Any

import pytest
import yaml

from tests.conftest import IN_CI, ROOT

PROFILE = ("prometheus", "grafana", "otel-collector", "jaeger")


@pytest.fixture(scope="module")
def services() -> dict[str, Any]:
    return dict(yaml.safe_load((ROOT / "docker-compose.yml").read_text())["services"])


def _mounts(service: dict[str, Any]) -> dict[str, Path]:
    """Container path -> host path of the service's bind mounts (named volumes left out)."""
    mounts = {}
    for volume in service.get("volumes", []):
        source, target = volume.split(":")[:2]
        if source.startswith("./"):
            mounts[target] = ROOT / source
    return mounts


def _promtool(*args: str) -> subprocess.CompletedProcess[str]:
    promtool = shutil.which("promtool")
    if promtool is None:
        message = "promtool is not installed (Debian: apt-get install prometheus)"
        if IN_CI:
            pytest.fail(f"{message}; CI=true: the Prometheus files must be checked", pytrace=False)
        pytest.skip(message)
    return subprocess.run([promtool, *args], capture_output=True, text=True, check=False)


def test_the_profile_starts_only_on_request_and_publishes_on_loopback(services: dict[str, Any]) -> None:
    for name in PROFILE:
        assert services[name]["profiles"] == ["observability"], name
        for port in services[name].get("ports", []):
            assert str(port).startswith("127.0.0.1:"), (name, port)
    for name in ("api", "worker", "beat", "flower", "redis", "postgres"):
        assert "profiles" not in services[name], name


def test_prometheus_runs_the_shipped_config_and_rules(services: dict[str, Any]) -> None:
    prometheus = services["prometheus"]
    mounts = _mounts(prometheus)
    assert mounts["/etc/prometheus"] == ROOT / "deploy" / "prometheus"
    assert "--config.file=/etc/prometheus/prometheus.yml" in prometheus["command"]
    config = yaml.safe_load((ROOT / "deploy" / "prometheus" / "prometheus.yml").read_text())
    for rule_file in config["rule_files"]:
        assert (mounts["/etc/prometheus"] / rule_file).is_file()
    scraped = {target for job in config["scrape_configs"] for sd in job.get("dns_sd_configs", [])
               for target in sd["names"]}  # fmt: skip
    scraped |= {t.split(":")[0] for job in config["scrape_configs"] for sc in job.get("static_configs", [])
                for t in sc["targets"]}  # fmt: skip
    assert scraped <= set(services)


def test_grafana_gets_the_dashboard_and_the_prometheus_data_source(services: dict[str, Any]) -> None:
    mounts = _mounts(services["grafana"])
    provisioning = mounts["/etc/grafana/provisioning"]
    (datasource,) = yaml.safe_load((provisioning / "datasources" / "prometheus.yml").read_text())[
        "datasources"
    ]
    assert datasource["type"] == "prometheus" and datasource["isDefault"] is True
    assert datasource["url"] == "http://prometheus:9090"
    (provider,) = yaml.safe_load((provisioning / "dashboards" / "cloudscale.yml").read_text())["providers"]
    folder = provider["options"]["path"]
    dashboards = {target: host for target, host in mounts.items() if target.startswith(folder + "/")}
    assert list(dashboards.values()) == [ROOT / "deploy" / "grafana" / "cloudscale.json"]


def test_traces_go_from_the_apps_through_the_collector_to_jaeger(services: dict[str, Any]) -> None:
    collector = services["otel-collector"]
    (config_path,) = _mounts(collector).values()
    config = yaml.safe_load(config_path.read_text())
    assert config["receivers"]["otlp"]["protocols"]["http"]["endpoint"].endswith(":4318")
    pipeline = config["service"]["pipelines"]["traces"]
    (exporter,) = pipeline["exporters"]
    assert config["exporters"][exporter]["endpoint"] == "jaeger:4317"
    assert services["jaeger"]["environment"]["COLLECTOR_OTLP_ENABLED"] == "true"
    # The apps export only when told to, to the collector's OTLP/HTTP port (the profile's command line).
    assert (
        "OTEL_EXPORTER_OTLP_ENDPOINT=http://otel-collector:4318" in (ROOT / "docker-compose.yml").read_text()
    )


def test_promtool_accepts_the_scrape_config() -> None:
    result = _promtool("check", "config", str(ROOT / "deploy" / "prometheus" / "prometheus.yml"))
    assert result.returncode == 0, result.stdout + result.stderr


def test_promtool_accepts_the_alert_rules() -> None:
    result = _promtool("check", "rules", str(ROOT / "deploy" / "prometheus" / "alerts.yml"))
    assert result.returncode == 0, result.stdout + result.stderr
    assert "SUCCESS: 6 rules found" in result.stdout
