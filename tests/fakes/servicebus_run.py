"""Run a platform process with the in-memory Service Bus installed, for tests that start processes.

    python -m tests.fakes.servicebus_run celery -A cloudscale_project worker …
    python -m tests.fakes.servicebus_run gunicorn cloudscale_project.wsgi:application …

Each process gets a namespace of its own (nothing crosses processes): enough to show that every
process starts and stays up on `azureservicebus://`, not to move messages between them.
"""

from __future__ import annotations

import sys

from tests.fakes.servicebus import install_process_wide


def main() -> None:
    install_process_wide()
    program, *arguments = sys.argv[1:]
    sys.argv = [program, *arguments]
    if program == "celery":
        from celery.__main__ import main as celery_main

        celery_main()
    elif program == "gunicorn":
        from gunicorn.app.wsgiapp import run

        run()
    else:
        raise SystemExit(f"servicebus_run: unsupported program {program!r}")


if __name__ == "__main__":
    main()
