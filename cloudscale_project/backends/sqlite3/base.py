"""Django's SQLite backend, with write transactions taking turns on a lock file first.

API, worker and beat processes share one SQLite file, whose writers take turns at its one write
lock. A writer that finds the lock taken waits in SQLite's busy handler, which sleeps 1, 2, 5, 10
… 50, 100 ms between tries: a turn that ends while it sleeps stays unused. With two pool
processes draining batches, that left about nine tenths of the drain serial and the second core
mostly idle (docs/benchmarks.md, "Levers, eighteenth round"). Here each transaction first takes an
exclusive `flock` on `<database>.writers`, waiting in the kernel, which wakes it the moment the
previous writer commits; the transaction's `BEGIN IMMEDIATE` then finds SQLite's lock free.
A blocking `flock` has no timeout: on a process's main thread (the workers' tasks) SIGALRM times
it, elsewhere (gunicorn's request threads) the lock is tried again every millisecond. A helper
thread with a timed event, and polling everywhere, cost more CPU than they saved (docs/benchmarks.md,
"Levers, nineteenth round"; docs/decisions.md, "SQLite's writers queue on a lock file").

The queue is advisory: SQLite's own lock still keeps writes apart, and its busy timeout still
bounds a wait for it. A writer waits for the queue at most the same timeout, then goes on to
`BEGIN` (and SQLite's busy handler) without it, so a stuck or leaked turn costs time, never a
hang. Writes outside `transaction.atomic()` (autocommit) do not queue; they wait in the busy
handler as before. `flock` locks belong to an open file description, which a forked process
shares with its parent, and on a shared description `flock` does not exclude: every process
therefore opens the file itself: a child closes the copies it inherited at fork
(`os.register_at_fork`) and opens its own at its first turn.
"""

from __future__ import annotations

import fcntl
import logging
import os
import signal
import threading
import time
import weakref
from typing import Any

from django.db.backends.sqlite3 import base

logger = logging.getLogger(__name__)


# A thread other than the main one (gunicorn's request threads) cannot time a blocking `flock` with
# SIGALRM: it tries again this often instead. Those writes are rare (the admin, tenant changes);
# the workers' tasks, which write all the time, run on their process's main thread.
POLL_SECONDS = 0.001


class _TurnTimeout(Exception):
    """Raised by the SIGALRM handler to end a blocking wait for the turn."""


def _on_alarm(signum: int, frame: object) -> None:
    raise _TurnTimeout


def _can_time_with_alarm() -> bool:
    """SIGALRM is free for the wait: on the main thread, with no handler or timer of another's."""
    return (
        threading.current_thread() is threading.main_thread()
        and signal.getsignal(signal.SIGALRM) == signal.SIG_DFL
        and signal.getitimer(signal.ITIMER_REAL) == (0.0, 0.0)
    )


def _wait_with_alarm(fd: int, timeout: float) -> bool:
    """A blocking `flock`, which the kernel ends the moment the turn is free, timed by SIGALRM
    (as util-linux's `flock --wait` does)."""
    timed_out = False
    signal.signal(signal.SIGALRM, _on_alarm)
    try:
        try:
            signal.setitimer(signal.ITIMER_REAL, timeout)
            try:
                fcntl.flock(fd, fcntl.LOCK_EX)
            finally:
                signal.setitimer(signal.ITIMER_REAL, 0)
        except _TurnTimeout:
            timed_out = True
    finally:
        while True:  # `signal.signal` first runs the handler of an alarm still pending
            try:
                signal.signal(signal.SIGALRM, signal.SIG_DFL)
                break
            except _TurnTimeout:
                timed_out = True
    if timed_out:
        fcntl.flock(fd, fcntl.LOCK_UN)  # the alarm may have come just after the turn did
    return not timed_out


def _wait_polling(fd: int, timeout: float) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        time.sleep(POLL_SECONDS)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            continue
        return True
    return False


class WriteQueue:
    """An exclusive `flock` on one file, held for one write transaction of one connection."""

    _instances: weakref.WeakSet[WriteQueue] = weakref.WeakSet()

    def __init__(self, path: str) -> None:
        self.path = path
        self.held = False
        self._fd: int | None = None
        self._close_fd: weakref.finalize[Any, Any] | None = None
        WriteQueue._instances.add(self)

    def _fileno(self) -> int:
        if self._fd is None:  # first use, or closed, or dropped in a forked child (the at-fork hook)
            self._fd = os.open(self.path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o644)
            self._close_fd = weakref.finalize(self, os.close, self._fd)  # a dropped connection
        return self._fd

    def acquire(self, timeout: float) -> bool:
        """Wait for the turn at most `timeout` seconds; False when it did not come."""
        fd = self._fileno()
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            wait = _wait_with_alarm if _can_time_with_alarm() else _wait_polling
            if not wait(fd, timeout):
                return False
        self.held = True
        return True

    def release(self) -> None:
        if self.held:
            self.held = False
            if self._fd is not None:
                fcntl.flock(self._fd, fcntl.LOCK_UN)

    def close(self) -> None:
        self.release()
        self.close_descriptor()

    def close_descriptor(self) -> None:
        """Close this process's descriptor. In a forked child (the at-fork hook below) it refers to
        the parent's description, whose lock closing one descriptor leaves alone; LOCK_UN would
        release the parent's turn."""
        if self._close_fd is not None:
            self._close_fd()
        self._close_fd = None
        self._fd = None
        self.held = False


def _forget_queues_after_fork() -> None:
    for queue in list(WriteQueue._instances):
        queue.close_descriptor()


os.register_at_fork(after_in_child=_forget_queues_after_fork)


def _lock_path(database_name: Any) -> str | None:
    """The queue's file beside the database's; None for an in-memory database (one process)."""
    name = str(database_name)
    if not name or name == ":memory:" or "mode=memory" in name:
        return None
    return name.removeprefix("file:").split("?", 1)[0] + ".writers"


class DatabaseWrapper(base.DatabaseWrapper):
    """SQLite whose `transaction.atomic()` blocks queue on a lock file before `BEGIN IMMEDIATE`."""

    # The hooks below are private to Django's backends (absent from django-stubs: hence the ignores).

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._write_queue: WriteQueue | None = None

    def _queue(self) -> WriteQueue | None:
        path = _lock_path(self.settings_dict["NAME"])
        if path is None:
            return None
        if self._write_queue is None or self._write_queue.path != path:
            if self._write_queue is not None:  # the test runner renamed the database
                self._write_queue.close()
            self._write_queue = WriteQueue(path)
        return self._write_queue

    def _start_transaction_under_autocommit(self) -> None:
        queue = self._queue()
        if queue is not None:
            timeout = self._busy_timeout()
            try:
                got_turn = queue.acquire(timeout)
            except OSError as error:  # the lock file cannot be opened or locked: the queue is advisory
                logger.warning("sqlite write queue: %s; starting the transaction without a turn", error)
            else:
                if not got_turn:
                    logger.warning(
                        "sqlite write queue: no turn after %.0f s, starting the transaction without it",
                        timeout,
                    )
        try:
            super()._start_transaction_under_autocommit()  # type: ignore[misc]
        except BaseException:
            self._release_turn()
            raise

    def _busy_timeout(self) -> float:
        return float(self.settings_dict.get("OPTIONS", {}).get("timeout", 5))

    def _release_turn(self) -> None:
        if self._write_queue is not None:
            self._write_queue.release()

    def _commit(self) -> None:
        try:
            super()._commit()  # type: ignore[misc]
        finally:
            self._release_turn()

    def _rollback(self) -> None:
        try:
            super()._rollback()  # type: ignore[misc]
        finally:
            self._release_turn()

    def _close(self) -> None:
        try:
            super()._close()  # type: ignore[misc]
        finally:
            if self._write_queue is not None:
                self._write_queue.close()
