"""The project's nginx config (deploy/nginx.conf, rendered for loopback) in front of 4 real APIs.

Real nginx (Debian's package; `.ci/run` installs it), four gunicorn processes started with the
project's gunicorn config, each naming itself in `X-CloudScale-Instance`. Rendering changes only
what differs on loopback: the upstream addresses (compose: one DNS name, here four ports), the
listen address and the file paths; every proxy setting is the file's own.
"""

from __future__ import annotations

import http.client
import re
import shutil
import signal
import socket
import subprocess
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from tests.conftest import IN_CI, ROOT, LiveProcess, child_env, wait_until
from tests.netutil import free_port

pytestmark = pytest.mark.e2e

NGINX = shutil.which("nginx") or next(
    (path for path in ("/usr/sbin/nginx", "/usr/local/sbin/nginx") if Path(path).exists()), None
)
API_COUNT = 4
# Clients come from other loopback addresses than nginx's own 127.0.0.1, so "the proxy" and "the
# client" are different addresses, as they are in compose.
CLIENT_A, CLIENT_B = "127.0.0.2", "127.0.0.3"
INSTANCE_HEADER = "X-CloudScale-Instance"


@pytest.fixture(autouse=True)
def _require_nginx() -> None:
    if NGINX is None:
        message = "nginx is not installed (apt-get install nginx; .ci/run does it)"
        if IN_CI:
            pytest.fail(f"{message} (CI=true: a missing service is a failure)", pytrace=False)
        pytest.skip(message)


def render_for_loopback(conf: str, *, listen_port: int, api_ports: list[int], prefix: Path) -> str:
    """deploy/nginx.conf with loopback upstreams, listen address and paths; nothing else changes."""

    def substitute(pattern: str, replacement: str, text: str) -> str:
        result, count = re.subn(pattern, replacement, text, flags=re.MULTILINE)
        assert count == 1, f"deploy/nginx.conf changed: {pattern!r} matched {count} times"
        return result

    server = re.search(r"^\s*server api:8000 (?P<params>[^;]*);$", conf, flags=re.MULTILINE)
    assert server, "deploy/nginx.conf has no `server api:8000 …;` upstream line"
    params = server["params"].replace("resolve", "").strip()  # DNS re-resolution: compose only
    servers = "\n".join(f"        server 127.0.0.1:{port} {params};" for port in api_ports)
    conf = substitute(r"^\s*server api:8000 [^;]*;$", servers, conf)
    conf = substitute(r"^\s*resolver [^;]*;$", "", conf)
    conf = substitute(r"^\s*listen 80;$", f"        listen 127.0.0.1:{listen_port};", conf)
    conf = substitute(r"^pid [^;]*;$", f"pid {prefix / 'nginx.pid'};", conf)
    conf = substitute(r"^worker_processes [^;]*;$", "worker_processes 1;", conf)
    return conf


@dataclass
class Stack:
    url_port: int
    apis: list[LiveProcess]
    nginx: subprocess.Popen[bytes]


def _start_api(index: int, port: int, tmp_path: Path) -> LiveProcess:
    log_path = tmp_path / f"api-{index}.log"
    env = child_env(
        CLOUDSCALE_ENV="production",
        DJANGO_ALLOWED_HOSTS="127.0.0.1,localhost",
        DJANGO_SECURE_COOKIES="false",
        GUNICORN_BIND=f"127.0.0.1:{port}",
        WEB_CONCURRENCY="1",
        GUNICORN_THREADS="4",
        CLOUDSCALE_INSTANCE=f"api-{index}",
        CLOUDSCALE_TRUSTED_PROXIES="127.0.0.1/32",  # nginx's address, as compose sets it
        # The default per-IP bucket (100); refill slowed so the count is exact.
        CLOUDSCALE_RATE_LIMIT_PER_IP_CAPACITY="100",
        CLOUDSCALE_RATE_LIMIT_PER_IP_REFILL="0.01",
        CLOUDSCALE_RATE_LIMIT_GLOBAL_PER_MINUTE="10000",
    )
    gunicorn = Path(ROOT / ".venv" / "bin" / "gunicorn")
    argv = [
        str(gunicorn),
        "cloudscale_project.wsgi:application",
        "--config",
        str(ROOT / "deploy" / "gunicorn.conf.py"),
    ]
    with log_path.open("wb") as log:
        process = subprocess.Popen(
            argv, cwd=ROOT, env=env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True
        )
    return LiveProcess(process, log_path)


def _request(
    port: int, path: str, *, source: str = CLIENT_A, headers: dict[str, str] | None = None
) -> tuple[int, dict[str, str]]:
    connection = http.client.HTTPConnection("127.0.0.1", port, timeout=10, source_address=(source, 0))
    try:
        connection.request("GET", path, headers=headers or {})
        response = connection.getresponse()
        response.read()
        return response.status, {name.lower(): value for name, value in response.getheaders()}
    finally:
        connection.close()


def _listening(port: int) -> bool:
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=0.5):
            return True
    except OSError:
        return False


def _serving(port: int) -> bool:
    """The API answers, not only listens: gunicorn binds before its worker has loaded Django, and a
    replica that fails nginx's first request to it is left out for `fail_timeout` (10 s)."""
    connection = http.client.HTTPConnection("127.0.0.1", port, timeout=5)
    try:
        connection.request("GET", "/healthz")
        return connection.getresponse().status == 200
    except OSError:
        return False
    finally:
        connection.close()


@pytest.fixture
def stack(django_db_setup: None, tmp_path: Path) -> Iterator[Stack]:
    api_ports = [free_port() for _ in range(API_COUNT)]
    apis = [_start_api(index, port, tmp_path) for index, port in enumerate(api_ports)]
    listen_port = free_port()
    conf = render_for_loopback(
        (ROOT / "deploy" / "nginx.conf").read_text(),
        listen_port=listen_port,
        api_ports=api_ports,
        prefix=tmp_path,
    )
    conf_path = tmp_path / "nginx.conf"
    conf_path.write_text(conf)
    assert NGINX is not None  # _require_nginx (autouse) skipped the test otherwise
    check = subprocess.run(
        [NGINX, "-t", "-p", str(tmp_path), "-c", str(conf_path)], check=False, capture_output=True, text=True
    )
    assert check.returncode == 0, check.stderr
    nginx_log = (tmp_path / "nginx.log").open("wb")
    nginx = subprocess.Popen(
        [NGINX, "-p", str(tmp_path), "-c", str(conf_path), "-g", "daemon off;"],
        stdout=nginx_log,
        stderr=subprocess.STDOUT,
        start_new_session=True,
    )
    try:
        for api, port in zip(apis, api_ports, strict=True):
            wait_until(
                lambda port=port: _serving(port), timeout=60, message=f"API on {port}: {api.log()[-2000:]}"
            )
        wait_until(lambda: _listening(listen_port), timeout=20, message="nginx listening")
        yield Stack(listen_port, apis, nginx)
    finally:
        nginx.send_signal(signal.SIGQUIT)
        try:
            nginx.wait(timeout=10)
        except subprocess.TimeoutExpired:
            nginx.kill()
        nginx_log.close()
        for api in apis:
            api.stop()


def test_it_spreads_requests_over_every_api(stack: Stack) -> None:
    seen = Counter(_request(stack.url_port, "/healthz")[1].get(INSTANCE_HEADER.lower()) for _ in range(40))
    assert set(seen) == {f"api-{index}" for index in range(API_COUNT)}, seen


def test_it_loses_no_request_when_an_api_dies(stack: Stack) -> None:
    stack.apis[2].stop(signal.SIGKILL)
    results = [_request(stack.url_port, "/healthz") for _ in range(40)]

    assert [status for status, _ in results] == [200] * 40
    served = Counter(headers.get(INSTANCE_HEADER.lower()) for _, headers in results)
    assert set(served) == {"api-0", "api-1", "api-3"}, served


def test_it_rate_limits_the_real_client_address_behind_nginx(stack: Stack) -> None:
    # Every request forges a new X-Forwarded-For; nginx appends the real address, the API reads
    # right to left from its trusted proxy, so all of them land in CLIENT_A's bucket of 100.
    statuses = [
        _request(stack.url_port, "/api/events", headers={"X-Forwarded-For": f"198.51.100.{n % 250}"})[0]
        for n in range(100)
    ]
    assert 429 not in statuses
    status, headers = _request(stack.url_port, "/api/events", headers={"X-Forwarded-For": "203.0.113.99"})
    assert status == 429
    assert int(headers["retry-after"]) >= 1
    # Another client behind the same proxy has a bucket of its own.
    assert _request(stack.url_port, "/api/events", source=CLIENT_B)[0] != 429
