"""The private Celery and billiard internals `ops.autoscaler.TargetAutoscaler` relies on still exist.

The autoscaler overrides `Autoscaler._maybe_scale` and `_shrink`, calls `_grow`, reads
`_last_scale_up`/`_last_task_received`, and looks into the prefork pool (`TaskPool._pool`, Celery's
`AsynPool._waiting_to_start`, billiard's `Pool._pool` and `Process._controlled_termination`). None
of that is public API, and most of it is read with `getattr(..., default)`, so a rename would not
crash: the autoscaler would silently stop following the target or stop guarding its shrinks.
pyproject.toml pins Celery's minor version for that reason; these tests fail loudly when a new
version changes a hook, and say what to re-check.
"""

from __future__ import annotations

import inspect
from collections.abc import Callable
from typing import Any

import billiard
import celery
import pytest
from billiard.pool import Pool as BilliardPool
from celery.concurrency.asynpool import AsynPool
from celery.concurrency.base import BasePool
from celery.concurrency.prefork import TaskPool
from celery.worker.autoscale import Autoscaler

RECHECK = (
    "Celery {version} / billiard {billiard} changed a private hook that ops/autoscaler.py relies on: "
    "{what}. Re-read celery/worker/autoscale.py and celery/concurrency/asynpool.py of this version, "
    "adapt TargetAutoscaler (its _maybe_scale/_shrink overrides and _pool_settling), re-run "
    "tests/ops/test_autoscale_worker.py, then move the Celery pin in pyproject.toml."
)


def _recheck(what: str) -> str:
    return RECHECK.format(version=celery.__version__, billiard=billiard.__version__, what=what)


def _parameters(function: Callable[..., Any]) -> list[tuple[str, Any]]:
    return [(p.name, p.default) for p in inspect.signature(function).parameters.values()]


@pytest.mark.parametrize(
    ("name", "parameters"),
    [
        ("_maybe_scale", [("self", inspect.Parameter.empty), ("req", None)]),
        ("_grow", [("self", inspect.Parameter.empty), ("n", inspect.Parameter.empty)]),
        ("_shrink", [("self", inspect.Parameter.empty), ("n", inspect.Parameter.empty)]),
        ("scale_down", [("self", inspect.Parameter.empty), ("n", inspect.Parameter.empty)]),
        ("update", [("self", inspect.Parameter.empty), ("max", None), ("min", None)]),
        (
            "_update_consumer_prefetch_count",
            [("self", inspect.Parameter.empty), ("new_max", inspect.Parameter.empty)],
        ),
        ("info", [("self", inspect.Parameter.empty)]),
    ],
)
def test_it_finds_the_autoscaler_methods_it_overrides_with_their_signatures(
    name: str, parameters: list[tuple[str, Any]]
) -> None:
    method = getattr(Autoscaler, name, None)
    assert callable(method), _recheck(f"Autoscaler.{name} is gone")
    assert _parameters(method) == parameters, _recheck(
        f"Autoscaler.{name}{inspect.signature(method)} is not {name}({', '.join(n for n, _ in parameters)})"
    )


def test_it_finds_the_autoscaler_constructor_it_extends() -> None:
    names = [name for name, _ in _parameters(Autoscaler.__init__)]
    assert names == ["self", "pool", "max_concurrency", "min_concurrency", "worker", "keepalive", "mutex"], (
        _recheck(f"Autoscaler.__init__{inspect.signature(Autoscaler.__init__)} changed")
    )


def test_it_finds_the_autoscaler_state_it_reads() -> None:
    autoscaler = Autoscaler(pool=BasePool(limit=1), max_concurrency=2, min_concurrency=1, keepalive=1)
    for attribute in ("_last_scale_up", "_last_task_received", "max_concurrency", "min_concurrency",
                      "keepalive", "mutex", "worker", "pool"):  # fmt: skip
        assert hasattr(autoscaler, attribute), _recheck(f"Autoscaler instances have no {attribute!r}")
    assert autoscaler.processes == 1, _recheck("Autoscaler.processes no longer reads pool.num_processes")


def test_it_finds_the_prefork_pool_internals_it_reads() -> None:
    assert "_pool" in vars(BasePool), _recheck("celery's BasePool no longer declares `_pool`")
    assert "self._pool = Pool(" in inspect.getsource(TaskPool.on_start), _recheck(
        "prefork TaskPool.on_start no longer keeps its billiard pool in `self._pool`"
    )
    assert "self._waiting_to_start = set()" in inspect.getsource(AsynPool.__init__), _recheck(
        "AsynPool no longer tracks starting processes in `_waiting_to_start`"
    )
    assert "self._pool = []" in inspect.getsource(BilliardPool.__init__), _recheck(
        "billiard's Pool no longer lists its processes in `_pool`"
    )
    assert billiard.Process()._controlled_termination is False, _recheck(
        "billiard processes have no `_controlled_termination` flag"
    )
    assert [name for name, _ in _parameters(BilliardPool.shrink)] == ["self", "n"], _recheck(
        f"billiard's Pool.shrink{inspect.signature(BilliardPool.shrink)} changed"
    )
