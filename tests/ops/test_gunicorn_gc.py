"""The API's gunicorn workers freeze their start-up heap out of the garbage collector's sight.

Without it a full collection walked every object Django, DRF, Celery and kombu made at start-up
and stalled all of a worker's threads for 118-356 ms under load on a slow machine
(docs/benchmarks.md, "Levers, twelfth round"). The hook is `post_worker_init` in
deploy/gunicorn.conf.py; `GUNICORN_GC_FREEZE=0` turns it off. The same hook tells the group
commit how many request threads the worker runs (events/publishing.py, `serve_with_threads`).
"""

from __future__ import annotations

import os
from pathlib import Path

from gunicorn.app.base import Application

from tests.conftest import ROOT, run_python

CONFIG = ROOT / "deploy" / "gunicorn.conf.py"

# The hook as a gunicorn worker runs it: Django set up, the application loaded, then the hook.
_RUN_HOOK = """
import gc, runpy, sys
from types import SimpleNamespace
from cloudscale_project.wsgi import application
hooks = runpy.run_path(sys.argv[1])
hooks["post_worker_init"](SimpleNamespace(cfg=SimpleNamespace(threads=7)))
import events.ingestion
print(events.ingestion._groups.request_threads, gc.get_freeze_count(), "events.api" in sys.modules)
"""


def _hook_in_a_worker_like_process(tmp_path: Path, *, freeze: str) -> tuple[int, bool, str]:
    env = {
        **os.environ,
        "DJANGO_SETTINGS_MODULE": "cloudscale_project.settings",
        "CLOUDSCALE_STATE_DIR": str(tmp_path),
        "GUNICORN_GC_FREEZE": freeze,
    }
    done = run_python(_RUN_HOOK, str(CONFIG), env=env)
    assert done.returncode == 0, done.stderr[-3000:]
    threads, frozen, views_loaded = done.stdout.split()[-3:]
    return int(frozen), views_loaded == "True", threads


class _ConfigOnly(Application):
    """gunicorn's own loading of deploy/gunicorn.conf.py, without a command line or an app."""

    def init(self, parser: object, opts: object, args: object) -> None:
        return None

    def load_config(self) -> None:
        self.load_config_from_file(str(CONFIG))

    def load(self) -> None:
        return None


def test_gunicorn_takes_the_hook_from_the_config_file() -> None:
    hook = _ConfigOnly().cfg.post_worker_init
    assert hook.__name__ == "post_worker_init"
    assert hook.__code__.co_filename == str(CONFIG)


def test_a_worker_freezes_its_start_up_heap_with_the_views_loaded(tmp_path: Path) -> None:
    frozen, views_loaded, _ = _hook_in_a_worker_like_process(tmp_path, freeze="1")
    assert frozen > 50_000  # Django, DRF, Celery, kombu, pydantic: well over this many objects
    assert views_loaded


def test_a_worker_tells_the_group_commit_how_many_request_threads_it_runs(tmp_path: Path) -> None:
    *_, threads = _hook_in_a_worker_like_process(tmp_path, freeze="0")
    assert threads == "7"  # the worker's cfg.threads, freeze or not


def test_the_freeze_can_be_turned_off(tmp_path: Path) -> None:
    frozen, *_ = _hook_in_a_worker_like_process(tmp_path, freeze="0")
    assert frozen == 0
