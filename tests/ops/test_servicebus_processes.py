"""On `azureservicebus://`, every process `make run` starts comes up and stays up.

The processes are built by `runplatform` itself (API, autoscaling worker, beat, Flower) and run
with the in-memory SDK installed in each (tests/fakes/servicebus_run.py). Service Bus has no
broadcast and no cross-process events, so Flower serves its pages but knows no worker.
"""

from __future__ import annotations

import base64
import json
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path
from typing import Any

import pytest

from ops.launcher import Child, Supervisor
from ops.management.commands.runplatform import Command as RunPlatform
from tests.conftest import child_env, wait_until
from tests.netutil import free_port

pytestmark = [pytest.mark.e2e, pytest.mark.django_db(transaction=True)]

_FAILURE_MARKERS = ("Unrecoverable error", "Traceback (most recent call last)")


def _with_fake_servicebus(child: Child) -> None:
    argv = list(child.argv)
    if argv[1:3] == ["-m", "celery"]:
        rest = argv[3:]
        program = "celery"
    else:  # the gunicorn script
        rest = argv[1:]
        program = "gunicorn"
    child.argv = [sys.executable, "-m", "tests.fakes.servicebus_run", program, *rest]


def _get(url: str, *, auth: tuple[str, str] | None = None) -> tuple[int, bytes]:
    request = urllib.request.Request(url)
    if auth:
        token = base64.b64encode(f"{auth[0]}:{auth[1]}".encode()).decode()
        request.add_header("Authorization", f"Basic {token}")
    try:
        with urllib.request.urlopen(request, timeout=5) as response:
            return response.status, response.read()
    except urllib.error.HTTPError as exc:
        return exc.code, exc.read()
    except OSError:
        return 0, b""


def _log(logs: Path, name: str) -> str:
    path = logs / f"{name}.log"
    return path.read_text(errors="replace") if path.exists() else ""


def test_it_starts_api_worker_beat_and_flower_on_service_bus(tmp_path: Path) -> None:
    api_port, flower_port = free_port(), free_port()
    env = child_env(
        CLOUDSCALE_BROKER_URL="azureservicebus://RootManageSharedAccessKey:k3y=@cloudscale-proc",
        CLOUDSCALE_QUEUE_DEPTH_SAMPLE_SECONDS="2",  # beat publishes within seconds
    )
    supervisor = Supervisor()
    options: dict[str, Any] = {
        "port": api_port,
        "flower_port": flower_port,
        "api_workers": 1,
        "autoscale": "2,1",
        "no_beat": False,
        "no_flower": False,
    }
    RunPlatform._add_processes(supervisor, env=env, logs=tmp_path, flower_password="pw", **options)
    assert [child.name for child in supervisor.children] == ["api", "worker", "beat", "flower"]
    for child in supervisor.children:
        _with_fake_servicebus(child)
    supervisor.start_all()
    try:
        wait_until(lambda: " ready." in _log(tmp_path, "worker"), timeout=90, message="worker ready")
        wait_until(
            lambda: _get(f"http://127.0.0.1:{api_port}/readyz")[0] == 200, timeout=60, message="API ready"
        )
        wait_until(lambda: "Sending due task" in _log(tmp_path, "beat"), timeout=60, message="beat sends")
        flower = f"http://127.0.0.1:{flower_port}"
        wait_until(
            lambda: _get(f"{flower}/", auth=("admin", "pw"))[0] == 200, timeout=60, message="Flower up"
        )

        status, body = _get(f"{flower}/api/workers", auth=("admin", "pw"))
        assert (status, json.loads(body)) == (200, {})  # no broadcast on Service Bus: no worker known
        status, body = _get(f"{flower}/broker", auth=("admin", "pw"))
        assert status == 404 and b"azureservicebus" in body and b"not supported" in body
        status, body = _get(f"http://127.0.0.1:{api_port}/readyz")
        assert json.loads(body)["checks"]["broker"] == "ok"

        time.sleep(3)  # past the first receive polls, reconnects and beat ticks
        for child in supervisor.children:
            assert child.alive(), f"{child.name} exited:\n{_log(tmp_path, child.name)[-3000:]}"
            log = _log(tmp_path, child.name)
            assert not any(marker in log for marker in _FAILURE_MARKERS), f"{child.name}:\n{log[-3000:]}"
    finally:
        supervisor.stop_all()
