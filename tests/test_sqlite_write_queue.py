"""SQLite's write queue (cloudscale_project/backends/sqlite3): write transactions take turns on a
lock file, a turn passes the moment the previous one ends, a wait has a deadline, and a forked
process never shares its parent's turn. Real processes and real `flock` locks throughout."""

from __future__ import annotations

import multiprocessing
import signal
import threading
import time
from collections.abc import Callable
from pathlib import Path

import pytest
from django.db import OperationalError, connection, transaction
from django.db.backends.sqlite3 import base as django_sqlite

from cloudscale_project.backends.sqlite3 import base
from cloudscale_project.backends.sqlite3.base import WriteQueue

FORK = multiprocessing.get_context("fork")


def _hold_turn(path: str, seconds: float, holding: multiprocessing.synchronize.Event) -> None:
    queue = WriteQueue(path)
    assert queue.acquire(timeout=5)
    holding.set()
    time.sleep(seconds)
    queue.release()


def _holder(path: Path, seconds: float) -> multiprocessing.process.BaseProcess:
    """Another process holding the turn for `seconds`, started once it holds it."""
    holding = FORK.Event()
    process = FORK.Process(target=_hold_turn, args=(str(path), seconds, holding))
    process.start()
    assert holding.wait(10), "the holder never got its turn"
    return process


def _timed_acquire(queue: WriteQueue, timeout: float) -> tuple[bool, float]:
    started = time.monotonic()
    got = queue.acquire(timeout=timeout)
    return got, time.monotonic() - started


def test_a_writer_gets_the_turn_as_soon_as_the_holder_gives_it_back(tmp_path: Path) -> None:
    holder = _holder(tmp_path / "db.writers", seconds=0.4)
    queue = WriteQueue(str(tmp_path / "db.writers"))
    got, waited = _timed_acquire(queue, timeout=10)
    holder.join(5)
    assert got and queue.held
    # It waited for the holder (who held it 0.4 s from before we started), then no busy-handler
    # sleep: the kernel wakes a blocking flock at once.
    assert 0.1 < waited < 2.0, waited
    queue.release()
    assert not queue.held


def _timed_wait_as_a_pool_process(path: str, results: multiprocessing.queues.Queue) -> None:
    # As in a Celery pool process: SIGALRM has its default disposition and no timer runs (the
    # test run's own timeout uses SIGALRM in the parent).
    signal.setitimer(signal.ITIMER_REAL, 0)
    signal.signal(signal.SIGALRM, signal.SIG_DFL)

    def no_polling(fd: int, timeout: float) -> bool:
        raise AssertionError("polled on the main thread, where SIGALRM was free")

    base._wait_polling = no_polling
    queue = WriteQueue(path)
    got, waited = _timed_acquire(queue, timeout=0.3)
    results.put(
        (
            got,
            waited,
            signal.getsignal(signal.SIGALRM) == signal.SIG_DFL,
            signal.getitimer(signal.ITIMER_REAL),
        )
    )


def test_a_wait_timed_by_sigalrm_ends_at_its_deadline_and_leaves_sigalrm_as_it_was(
    tmp_path: Path,
) -> None:
    path = str(tmp_path / "db.writers")
    holder = _holder(tmp_path / "db.writers", seconds=3)
    results = FORK.Queue()
    waiter = FORK.Process(target=_timed_wait_as_a_pool_process, args=(path, results))
    waiter.start()
    got, waited, default_disposition, timer = results.get(timeout=10)
    waiter.join(10)
    assert waiter.exitcode == 0
    assert not got
    assert 0.25 < waited < 2.0, waited
    assert default_disposition and timer == (0.0, 0.0)
    holder.join(10)
    # A turn the timed-out wait got just after its alarm went off was given back.
    queue = WriteQueue(path)
    assert queue.acquire(timeout=1)
    queue.release()


def test_a_wait_leaves_a_sigalrm_in_use_by_another_alone(tmp_path: Path) -> None:
    """The test run's own timeout holds SIGALRM here: the wait polls instead of taking it."""
    handler = signal.getsignal(signal.SIGALRM)
    timer = signal.getitimer(signal.ITIMER_REAL)
    if handler == signal.SIG_DFL or timer == (0.0, 0.0):
        pytest.skip("pytest-timeout does not time this test with SIGALRM")
    holder = _holder(tmp_path / "db.writers", seconds=3)
    queue = WriteQueue(str(tmp_path / "db.writers"))
    got, waited = _timed_acquire(queue, timeout=0.3)
    assert not got and 0.25 < waited < 2.0, waited
    assert signal.getsignal(signal.SIGALRM) is handler
    assert 0 < signal.getitimer(signal.ITIMER_REAL)[0] <= timer[0]
    holder.join(10)


def test_a_wait_on_another_thread_ends_at_its_deadline_too(tmp_path: Path) -> None:
    holder = _holder(tmp_path / "db.writers", seconds=3)
    results: list[tuple[bool, float]] = []

    def wait_twice() -> None:
        queue = WriteQueue(str(tmp_path / "db.writers"))
        results.append(_timed_acquire(queue, timeout=0.3))
        results.append(_timed_acquire(queue, timeout=10))  # the holder gives it back meanwhile
        queue.release()

    thread = threading.Thread(target=wait_twice)
    thread.start()
    thread.join(20)
    holder.join(10)
    (timed_out, waited), (got, _) = results
    assert not timed_out and 0.25 < waited < 2.0, waited
    assert got


def _try_in_child(path: str, parent_queue: WriteQueue, results: multiprocessing.queues.Queue) -> None:
    # The queue object came over the fork with the parent's descriptor, and the parent holds the turn.
    results.put(("while the parent holds it", parent_queue.acquire(timeout=0.3)))
    results.put(("after the parent gave it back", parent_queue.acquire(timeout=10)))
    parent_queue.release()


def test_a_forked_child_does_not_share_its_parents_turn_or_keep_it(tmp_path: Path) -> None:
    path = str(tmp_path / "db.writers")
    queue = WriteQueue(path)
    assert queue.acquire(timeout=1)
    results = FORK.Queue()
    child = FORK.Process(target=_try_in_child, args=(path, queue, results))
    child.start()
    first = results.get(timeout=10)
    assert first == ("while the parent holds it", False)
    queue.release()  # the child still lives: its copy of our descriptor must not keep the turn
    assert results.get(timeout=10) == ("after the parent gave it back", True)
    child.join(10)
    assert child.exitcode == 0


def _needs_sqlite() -> None:
    if connection.vendor != "sqlite":
        pytest.skip(f"SQLite's write queue; this run's database is {connection.vendor}")


def _other_writer_can_get_turn() -> bool:
    """Whether a writer with a description of its own would get the turn now."""
    other = WriteQueue(connection._queue().path)  # type: ignore[attr-defined]
    got = other.acquire(timeout=0.1)
    other.close()
    return got


@pytest.mark.django_db(transaction=True)
def test_a_transaction_holds_the_turn_from_begin_to_commit_or_rollback() -> None:
    _needs_sqlite()
    with transaction.atomic():
        assert not _other_writer_can_get_turn()
        with transaction.atomic():  # a savepoint takes no second turn
            pass
        assert not _other_writer_can_get_turn()
    assert _other_writer_can_get_turn()

    with pytest.raises(ZeroDivisionError), transaction.atomic():
        assert not _other_writer_can_get_turn()
        raise ZeroDivisionError
    assert _other_writer_can_get_turn()


@pytest.mark.django_db(transaction=True)
def test_a_begin_that_fails_gives_the_turn_back(monkeypatch: pytest.MonkeyPatch) -> None:
    _needs_sqlite()

    def refuse(self: object) -> None:
        raise OperationalError("database is locked")

    patched: Callable[[object], None] = refuse
    monkeypatch.setattr(django_sqlite.DatabaseWrapper, "_start_transaction_under_autocommit", patched)
    with pytest.raises(OperationalError), transaction.atomic():
        pass
    monkeypatch.undo()
    assert _other_writer_can_get_turn()


def test_an_in_memory_database_has_no_queue(tmp_path: Path) -> None:
    from cloudscale_project.backends.sqlite3.base import _lock_path

    assert _lock_path(":memory:") is None
    assert _lock_path("file:memorydb_default?mode=memory&cache=shared") is None
    assert _lock_path(str(tmp_path / "x.sqlite3")) == str(tmp_path / "x.sqlite3.writers")


@pytest.mark.django_db(transaction=True)
def test_a_lock_file_that_cannot_be_opened_leaves_transactions_working(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    _needs_sqlite()
    missing = str(tmp_path / "no-such-folder" / "db.writers")
    monkeypatch.setattr(base, "_lock_path", lambda name: missing)
    with (
        caplog.at_level("WARNING", logger=base.__name__),
        transaction.atomic(),
        connection.cursor() as cursor,
    ):
        cursor.execute("SELECT 1")
        assert cursor.fetchone() == (1,)
    assert "starting the transaction without a turn" in caplog.text
    monkeypatch.undo()
    assert _other_writer_can_get_turn()
