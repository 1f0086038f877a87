"""A small process supervisor for `make run`: one group of real processes, stopped together.

Each child runs in its own session (so Ctrl-C in the terminal reaches only us, and we stop the
children in order) and gets PR_SET_PDEATHSIG, so even a SIGKILL of the launcher leaves no orphans.
A child that dies unexpectedly is restarted, a bounded number of times.
"""

from __future__ import annotations

import contextlib
import ctypes
import logging
import os
import signal
import subprocess
import sys
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO

logger = logging.getLogger(__name__)

_PR_SET_PDEATHSIG = 1
STOP_GRACE_SECONDS = 15.0
MAX_RESTARTS = 5
RESTART_WINDOW_SECONDS = 60.0


def _die_with_parent() -> None:
    """Runs in the child before exec: the kernel sends SIGTERM when the launcher dies."""
    try:
        libc = ctypes.CDLL("libc.so.6", use_errno=True)
        libc.prctl(_PR_SET_PDEATHSIG, signal.SIGTERM)
    except OSError:
        pass  # not Linux: Ctrl-C still stops everything through stop_all()


@dataclass
class Child:
    name: str
    argv: Sequence[str]
    env: dict[str, str]
    log_path: Path | None
    infrastructure: bool = False  # stopped last: the broker must outlive the workers' final acks
    process: subprocess.Popen[bytes] | None = None
    restarts: list[float] = field(default_factory=list)
    _log: IO[bytes] | None = None

    def start(self) -> None:
        if self.log_path is not None:
            self.log_path.parent.mkdir(parents=True, exist_ok=True)
            self._log = self.log_path.open("ab")
        self.process = subprocess.Popen(
            list(self.argv),
            env=self.env,
            stdin=subprocess.DEVNULL,
            stdout=self._log,
            stderr=subprocess.STDOUT if self._log else None,
            start_new_session=True,
            preexec_fn=_die_with_parent,  # noqa: PLW1509 - only calls prctl, safe before exec
        )

    @property
    def pid(self) -> int | None:
        return self.process.pid if self.process else None

    def alive(self) -> bool:
        return self.process is not None and self.process.poll() is None

    def signal_group(self, signum: int) -> None:
        if self.process is None:
            return
        with contextlib.suppress(ProcessLookupError):
            os.killpg(self.process.pid, signum)

    def close_log(self) -> None:
        if self._log is not None:
            self._log.close()
            self._log = None


class Supervisor:
    def __init__(self) -> None:
        self.children: list[Child] = []
        self._stopping = False

    def add(
        self,
        name: str,
        argv: Sequence[str],
        *,
        env: dict[str, str],
        log_path: Path | None,
        infrastructure: bool = False,
    ) -> Child:
        child = Child(name=name, argv=argv, env=env, log_path=log_path, infrastructure=infrastructure)
        self.children.append(child)
        return child

    def start_all(self) -> None:
        for child in self.children:
            child.start()
            logger.info("started %s (pid %s)", child.name, child.pid)

    def request_stop(self, signum: int, frame: object) -> None:
        self._stopping = True

    def watch(self, poll_seconds: float = 0.5) -> int:
        """Until SIGINT/SIGTERM: restart children that die; then stop everything. Returns an exit code."""
        signal.signal(signal.SIGINT, self.request_stop)
        signal.signal(signal.SIGTERM, self.request_stop)
        exit_code = 0
        while not self._stopping:
            for child in self.children:
                if child.alive() or self._stopping:
                    continue
                code = child.process.returncode if child.process else None
                now = time.monotonic()
                child.restarts = [t for t in child.restarts if now - t < RESTART_WINDOW_SECONDS]
                if len(child.restarts) >= MAX_RESTARTS:
                    sys.stderr.write(f"{child.name} keeps dying (exit {code}); stopping the platform.\n")
                    self._stopping = True
                    exit_code = 1
                    break
                sys.stderr.write(f"{child.name} exited with {code}; restarting it.\n")
                child.restarts.append(now)
                child.start()
            time.sleep(poll_seconds)
        self.stop_all()
        return exit_code

    def stop_all(self) -> None:
        """SIGTERM the application processes, wait, then the infrastructure; SIGKILL stragglers."""
        apps = [c for c in self.children if not c.infrastructure]
        infrastructure = [c for c in self.children if c.infrastructure]
        for group in (apps, infrastructure):
            for child in group:
                child.signal_group(signal.SIGTERM)
            deadline = time.monotonic() + STOP_GRACE_SECONDS
            for child in group:
                self._reap(child, deadline)

    @staticmethod
    def _reap(child: Child, deadline: float) -> None:
        if child.process is not None:
            try:
                child.process.wait(timeout=max(0.1, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                sys.stderr.write(f"{child.name} did not stop in time; killing it.\n")
            # Also reap grandchildren (prefork pool, gunicorn workers) left in the group.
            child.signal_group(signal.SIGKILL)
            if child.alive():
                child.process.wait(timeout=5)
        child.close_log()
