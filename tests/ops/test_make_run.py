"""`make run` from the outside: the whole stack comes up, answers, and Ctrl-C leaves no process."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path

import psutil
import pytest

from tests.conftest import ROOT
from tests.netutil import free_port

pytestmark = [pytest.mark.e2e]

_START_TIMEOUT_SECONDS = 120


def _get(url: str) -> int:
    try:
        with urllib.request.urlopen(url, timeout=2) as response:
            return int(response.status)
    except urllib.error.HTTPError as exc:
        return int(exc.code)
    except OSError:
        return 0


def _family(pid: int) -> list[psutil.Process]:
    try:
        parent = psutil.Process(pid)
    except psutil.NoSuchProcess:
        return []
    return [parent, *parent.children(recursive=True)]


def test_make_run_starts_every_process_and_ctrl_c_stops_them_all(tmp_path: Path) -> None:
    port, flower_port, redis_port = free_port(), free_port(), free_port()
    env = {
        key: value
        for key, value in os.environ.items()
        if not key.startswith(("CLOUDSCALE_", "DATABASE_URL", "PROMETHEUS_", "DJANGO_SETTINGS"))
    }
    env.update(
        PORT=str(port),
        FLOWER_PORT=str(flower_port),
        CLOUDSCALE_STATE_DIR=str(tmp_path / "state"),
        CLOUDSCALE_EMBEDDED_REDIS_PORT=str(redis_port),
        CLOUDSCALE_ADMIN_PASSWORD="correct-horse-battery",
    )
    env.pop("DJANGO_SECRET_KEY", None)
    log = (tmp_path / "make-run.log").open("wb")
    make = subprocess.Popen(
        ["make", "--no-print-directory", "run"],
        cwd=ROOT, env=env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True,
    )  # fmt: skip
    pids: set[int] = set()
    try:
        deadline = time.monotonic() + _START_TIMEOUT_SECONDS
        while _get(f"http://127.0.0.1:{port}/readyz") != 200:
            assert make.poll() is None, (tmp_path / "make-run.log").read_text()
            assert time.monotonic() < deadline, "the API did not become ready in time"
            time.sleep(0.5)
        while _get(f"http://127.0.0.1:{flower_port}/healthcheck") != 200:
            assert time.monotonic() < deadline, "Flower did not come up in time"
            time.sleep(0.5)

        output = (tmp_path / "make-run.log").read_text()
        assert "API key cs_" in output
        assert f"curl -sS -X POST http://127.0.0.1:{port}/api/events" in output
        assert "password correct-horse-battery" in output
        assert _get(f"http://127.0.0.1:{flower_port}/") == 401, "Flower must ask for a password"

        names = " ".join(" ".join(p.cmdline()) for p in _family(make.pid))
        for expected in ("gunicorn", "worker", "beat", "flower", "valkey-server"):
            assert expected in names, f"{expected} is not running: {names}"
        pids = {p.pid for p in _family(make.pid)}
        assert len(pids) >= 7
    finally:
        os.killpg(make.pid, signal.SIGINT)  # what Ctrl-C in a terminal does
        try:
            make.wait(timeout=60)
        finally:
            log.close()

    time.sleep(1)
    survivors = [pid for pid in pids if psutil.pid_exists(pid) and psutil.Process(pid).status() != "zombie"]
    assert survivors == [], f"processes left behind: {survivors}"
    assert "All CloudScale processes stopped." in (tmp_path / "make-run.log").read_text()


def test_a_second_make_run_reuses_the_data(tmp_path: Path) -> None:
    """The demo tenant, its key and the admin user survive a restart (same state folder)."""
    env = dict(os.environ, CLOUDSCALE_STATE_DIR=str(tmp_path / "state"))
    env.pop("DATABASE_URL", None)
    env["DJANGO_SETTINGS_MODULE"] = "cloudscale_project.settings"
    script = (
        "import django; django.setup();"
        "from django.core.management import call_command; call_command('migrate', verbosity=0);"
        "from ops.management.commands.runplatform import Command as C; from django.conf import settings;"
        "print(C._demo_key(settings.STATE_DIR))"
    )
    python = str(Path(sys.executable))
    first = subprocess.run(
        [python, "-c", script], cwd=ROOT, env=env, capture_output=True, text=True, check=True
    )
    second = subprocess.run(
        [python, "-c", script], cwd=ROOT, env=env, capture_output=True, text=True, check=True
    )
    assert first.stdout.strip().startswith("cs_")
    assert first.stdout.strip() == second.stdout.strip()
