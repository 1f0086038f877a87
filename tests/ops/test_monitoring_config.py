"""deploy/prometheus and deploy/grafana: valid files that alert and chart on metrics /metrics really exports."""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

import yaml

from cloudscale_project.metrics import PLATFORM_COUNTERS, PLATFORM_GAUGES, PLATFORM_LABELED_GAUGES

DEPLOY = Path(__file__).resolve().parents[2] / "deploy"
EXPORTED = {
    "cloudscale_events_ingested_total",
    "cloudscale_ingestion_duration_seconds_bucket",
    "cloudscale_rate_limit_rejections_total",
    *PLATFORM_COUNTERS,
    *PLATFORM_GAUGES,
    *PLATFORM_LABELED_GAUGES,
}


def _rules() -> dict[str, dict[str, Any]]:
    groups = yaml.safe_load((DEPLOY / "prometheus" / "alerts.yml").read_text())["groups"]
    return {rule["alert"]: rule for group in groups for rule in group["rules"]}


def test_it_scrapes_the_api_replicas_and_flower() -> None:
    config = yaml.safe_load((DEPLOY / "prometheus" / "prometheus.yml").read_text())
    assert config["rule_files"] == ["alerts.yml"]
    jobs = {job["job_name"]: job for job in config["scrape_configs"]}
    assert jobs["cloudscale-api"]["metrics_path"] == "/metrics"
    assert jobs["cloudscale-api"]["dns_sd_configs"][0]["port"] == 8000
    assert jobs["flower"]["static_configs"][0]["targets"] == ["flower:5555"]


def test_it_alerts_on_depth_dead_letters_and_missing_heartbeats() -> None:
    rules = _rules()
    warning, critical = rules["CloudScaleQueueDepthWarning"], rules["CloudScaleQueueDepthCritical"]
    assert warning["expr"] == "max(cloudscale_queue_depth) >= 5000"
    assert warning["labels"]["severity"] == "warning"
    assert critical["expr"] == "max(cloudscale_queue_depth) > 10000"
    assert critical["labels"]["severity"] == "critical"
    assert "increase(cloudscale_dead_letters_total[5m])) > 0" in rules["CloudScaleDeadLetters"]["expr"]
    assert (
        "absent(cloudscale_worker_last_heartbeat_timestamp_seconds)"
        in rules["CloudScaleNoWorkerHeartbeat"]["expr"]
    )
    assert rules["CloudScaleNoWorkerHeartbeat"]["labels"]["severity"] == "critical"


def test_it_only_uses_metrics_that_are_exported() -> None:
    dashboard = json.loads((DEPLOY / "grafana" / "cloudscale.json").read_text())
    expressions = [t["expr"] for panel in dashboard["panels"] for t in panel["targets"]]
    expressions += [rule["expr"] for rule in _rules().values()]
    used = {name for expr in expressions for name in re.findall(r"cloudscale_[a-z_]+", expr)}
    assert used - EXPORTED == set()
    assert {"cloudscale_queue_depth", "cloudscale_worker_concurrency_target"} <= used
    assert len({panel["id"] for panel in dashboard["panels"]}) == len(dashboard["panels"])
