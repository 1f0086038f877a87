"""`make run`: only the API's gunicorn workers share the Prometheus multiprocess directory.

Flower keeps its own metrics (for its own /metrics); with the shared directory its series would be
summed into the API's /metrics. Workers and beat publish theirs through shared state (cloudscale_project.metrics).
"""

from __future__ import annotations

from pathlib import Path

from ops.launcher import Supervisor
from ops.management.commands.runplatform import Command
from tests.netutil import free_port


def test_only_the_api_gets_the_prometheus_multiprocess_directory(tmp_path: Path) -> None:
    supervisor = Supervisor()
    env = Command._child_env(tmp_path / "state")
    Command._add_processes(
        supervisor, env=env, logs=tmp_path, flower_password="pw", port=free_port(), flower_port=free_port(),
        api_workers=1, autoscale="2,1", no_beat=False, no_flower=False,
    )  # fmt: skip
    children = {child.name: child.env for child in supervisor.children}

    assert set(children) == {"api", "worker", "beat", "flower"}
    assert children["api"]["PROMETHEUS_MULTIPROC_DIR"] == str(tmp_path / "state" / "prometheus")
    for name in ("worker", "beat", "flower"):
        assert "PROMETHEUS_MULTIPROC_DIR" not in children[name], name
