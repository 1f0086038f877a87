"""`make run`'s Flower asks for a password that no other user of the machine can read in `ps`."""

from __future__ import annotations

import base64
import secrets
import urllib.error
import urllib.request
from pathlib import Path
from typing import Any

import psutil
import pytest

from ops.launcher import Supervisor
from ops.management.commands.runplatform import Command as RunPlatform
from tests.conftest import child_env, wait_until
from tests.netutil import free_port

pytestmark = [pytest.mark.e2e]


def _status(url: str, *, auth: tuple[str, str] | None = None) -> int:
    request = urllib.request.Request(url)
    if auth:
        request.add_header("Authorization", "Basic " + base64.b64encode(":".join(auth).encode()).decode())
    try:
        with urllib.request.urlopen(request, timeout=5) as response:
            return int(response.status)
    except urllib.error.HTTPError as exc:
        return int(exc.code)
    except OSError:
        return 0


def test_flowers_password_is_not_on_any_command_line_and_still_guards_it(tmp_path: Path) -> None:
    password, port = secrets.token_urlsafe(18), free_port()
    supervisor = Supervisor()
    options: dict[str, Any] = {
        "port": free_port(), "flower_port": port, "api_workers": 1, "autoscale": "2,1",
        "no_beat": True, "no_flower": False,
    }  # fmt: skip
    RunPlatform._add_processes(
        supervisor, env=child_env(), logs=tmp_path, flower_password=password, **options
    )
    [flower] = [child for child in supervisor.children if child.name == "flower"]
    assert not any(password in part for child in supervisor.children for part in child.argv)
    assert all(password not in value for child in supervisor.children if child is not flower
               for value in child.env.values())  # fmt: skip

    flower.start()
    try:
        url = f"http://127.0.0.1:{port}/"
        wait_until(lambda: _status(url, auth=("admin", password)) == 200, timeout=60, message="Flower up")
        assert _status(url) == 401
        assert _status(url, auth=("admin", "wrong")) == 401
        assert flower.pid is not None
        family = [psutil.Process(flower.pid), *psutil.Process(flower.pid).children(recursive=True)]
        command_lines = [" ".join(process.cmdline()) for process in family]
        assert any("flower" in line for line in command_lines)
        assert not any(password in line for line in command_lines), command_lines
    finally:
        supervisor.stop_all()
