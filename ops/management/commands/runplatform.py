"""`manage.py runplatform` (what `make run` calls): the whole platform as one supervised group."""

from __future__ import annotations

import os
import secrets
import shutil
import sys
from pathlib import Path
from typing import Any

from django.conf import settings
from django.contrib.auth import get_user_model
from django.core.management import call_command
from django.core.management.base import CommandParser

from cloudscale_project.commands import ExampleCommand
from ops.autoscale import default_pool_bounds
from ops.embedded_redis import embedded_redis_command, wait_for_redis
from ops.launcher import Supervisor
from tenants.models import Tenant
from tenants.services import DEMO_TENANT, tenant_create, tenant_rotate_key

ADMIN_USER = "admin"
FLOWER_AUTH_VARIABLE = "FLOWER_BASIC_AUTH"  # Flower reads any option from FLOWER_<NAME>
_SAMPLE_EVENT = '{"event_type":"page_view","user_id":"u-1","properties":{"url":"https://shop.example/"}}'


def _read_or_create_secret(path: Path) -> tuple[str, bool]:
    """A secret kept 0600 in the state folder; returns (value, created_now)."""
    if path.exists():
        return path.read_text().strip(), False
    value = secrets.token_urlsafe(18)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as handle:
        handle.write(value)
    return value, True


class Command(ExampleCommand):
    examples = """
make run                                   # the same, creating .venv first
PORT=8080 FLOWER_PORT=5556 manage.py runplatform
manage.py runplatform --no-flower
"""
    help = (
        "Start the embedded Redis, migrate, then run the API (gunicorn), a Celery worker with "
        "autoscaling, beat and Flower on loopback until Ctrl-C. Ports: PORT (8000), FLOWER_PORT (5555)."
    )

    def add_arguments(self, parser: CommandParser) -> None:
        parser.add_argument("--port", type=int, default=int(os.environ.get("PORT", "8000")))
        parser.add_argument("--flower-port", type=int, default=int(os.environ.get("FLOWER_PORT", "5555")))
        parser.add_argument("--api-workers", type=int, default=int(os.environ.get("WEB_CONCURRENCY", "2")))
        pool_max, pool_min = default_pool_bounds(cores=os.cpu_count() or 1)
        parser.add_argument(
            "--autoscale",
            default=os.environ.get("CLOUDSCALE_WORKER_AUTOSCALE") or f"{pool_max},{pool_min}",
            help=f"max,min worker processes (default here: {pool_max},{pool_min}, one per core; the "
            "queue-depth target lowers the max further)",
        )
        parser.add_argument("--no-flower", action="store_true", help="do not start Flower")
        parser.add_argument("--no-beat", action="store_true", help="do not start beat")

    def handle(self, *args: Any, **options: Any) -> None:
        state = settings.STATE_DIR
        logs = state / "logs"
        env = self._child_env(state)
        supervisor = Supervisor()

        if settings.USES_EMBEDDED_REDIS:
            redis_child = supervisor.add(
                "redis",
                embedded_redis_command(
                    port=settings.EMBEDDED_REDIS_PORT,
                    data_dir=state / "redis",
                    password=settings.EMBEDDED_REDIS_PASSWORD,
                    fsync=settings.EMBEDDED_REDIS_FSYNC,
                ),
                env=env,
                log_path=logs / "redis.out",
                infrastructure=True,
            )
            (state / "redis").mkdir(parents=True, exist_ok=True)
            redis_child.start()
            wait_for_redis(f"{settings.EMBEDDED_REDIS_URL}/0", process=redis_child.process)

        try:
            call_command("migrate", interactive=False, verbosity=0)
            api_key = self._demo_key(state)
            admin_password, admin_created = self._admin_user()
            flower_password, _ = _read_or_create_secret(state / "flower_password")
            self._add_processes(supervisor, env=env, logs=logs, flower_password=flower_password, **options)
            for child in supervisor.children:
                if child.process is None:
                    child.start()
            self._banner(
                options=options,
                api_key=api_key,
                admin_password=admin_password,
                admin_created=admin_created,
                flower_password=flower_password,
                logs=logs,
            )
        except BaseException:
            supervisor.stop_all()
            raise
        code = supervisor.watch()
        self.stdout.write("All CloudScale processes stopped.")
        if code:
            sys.exit(code)

    @staticmethod
    def _child_env(state: Path) -> dict[str, str]:
        env = dict(os.environ)
        env.setdefault("CLOUDSCALE_STATE_DIR", str(state))
        prom_dir = state / "prometheus"
        shutil.rmtree(prom_dir, ignore_errors=True)  # stale files of dead processes would be summed
        prom_dir.mkdir(parents=True, exist_ok=True)
        env["PROMETHEUS_MULTIPROC_DIR"] = str(prom_dir)
        env["PYTHONUNBUFFERED"] = "1"
        return env

    @staticmethod
    def _add_processes(
        supervisor: Supervisor,
        *,
        env: dict[str, str],
        logs: Path,
        flower_password: str,
        **options: Any,
    ) -> None:
        python = sys.executable
        bin_dir = Path(python).parent
        # Only gunicorn's workers share the multiprocess directory: Flower's own series (it uses
        # prometheus_client too) would otherwise be summed into the API's /metrics. Workers and beat
        # publish platform figures through shared state instead.
        api_env = env
        env = {k: v for k, v in env.items() if k != "PROMETHEUS_MULTIPROC_DIR"}
        supervisor.add(
            "api",
            [str(bin_dir / "gunicorn"), "cloudscale_project.wsgi:application",
             "--config", str(settings.BASE_DIR / "deploy" / "gunicorn.conf.py"),
             "--bind", f"127.0.0.1:{options['port']}", "--workers", str(options["api_workers"])],
            env=api_env,
            log_path=logs / "api.log",
        )  # fmt: skip
        supervisor.add(
            "worker",
            [python, "-m", "celery", "-A", "cloudscale_project", "worker",
             "-Q", f"{settings.QUEUE_NAME},{settings.OPS_QUEUE_NAME}", "--autoscale", options["autoscale"],
             "-n", "worker1@%h", "--loglevel", "INFO"],
            env=env,
            log_path=logs / "worker.log",
        )  # fmt: skip
        if not options["no_beat"]:
            supervisor.add(
                "beat",
                [python, "-m", "celery", "-A", "cloudscale_project", "beat",
                 "--schedule", settings.CELERY_BEAT_SCHEDULE_FILENAME, "--loglevel", "INFO"],
                env=env,
                log_path=logs / "beat.log",
            )  # fmt: skip
        if not options["no_flower"]:
            # The password goes in Flower's own environment variable, not its command line: every
            # user of the machine can read any process's arguments (`ps`), not its environment.
            supervisor.add(
                "flower",
                [python, "-m", "celery", "-A", "cloudscale_project", "flower",
                 "--address=127.0.0.1", f"--port={options['flower_port']}", "--purge_offline_workers=60"],
                env={**env, FLOWER_AUTH_VARIABLE: f"{ADMIN_USER}:{flower_password}"},
                log_path=logs / "flower.log",
            )  # fmt: skip

    @staticmethod
    def _demo_key(state: Path) -> str:
        """The demo tenant's key, kept 0600 in the state folder so every `make run` can print it."""
        key_file = state / "demo_api_key"
        if Tenant.objects.filter(slug=DEMO_TENANT).exists():
            if key_file.exists():
                return key_file.read_text().strip()
            key = tenant_rotate_key(slug=DEMO_TENANT).key
        else:
            key = tenant_create(slug=DEMO_TENANT, name="Demo tenant").key
        fd = os.open(key_file, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        with os.fdopen(fd, "w") as handle:
            handle.write(key)
        return key

    @staticmethod
    def _admin_user() -> tuple[str | None, bool]:
        """Create `admin` once; its password is printed only then (or taken from the environment)."""
        user_model = get_user_model()
        if user_model.objects.filter(username=ADMIN_USER).exists():
            return None, False
        password = os.environ.get("CLOUDSCALE_ADMIN_PASSWORD") or secrets.token_urlsafe(12)
        user_model.objects.create_superuser(username=ADMIN_USER, email="", password=password)
        return password, True

    def _banner(
        self,
        *,
        options: dict[str, Any],
        api_key: str,
        admin_password: str | None,
        admin_created: bool,
        flower_password: str,
        logs: Path,
    ) -> None:
        base = f"http://127.0.0.1:{options['port']}"
        password_line = (
            f"password {admin_password}  (shown once; set CLOUDSCALE_ADMIN_PASSWORD to choose it)"
            if admin_created
            else "password as printed on the first run (or CLOUDSCALE_ADMIN_PASSWORD)"
        )
        lines = [
            "",
            "CloudScale is starting on the embedded stack (SQLite + embedded Redis).",
            f"  API        {base}/api/   docs {base}/api/docs/   ready {base}/readyz",
            f"  Admin      {base}/admin/   user {ADMIN_USER}  {password_line}",
        ]
        if not options["no_flower"]:
            lines.append(
                f"  Flower     http://127.0.0.1:{options['flower_port']}/   user {ADMIN_USER}  "
                f"password {flower_password}"
            )
        lines += [
            f"  Metrics    {base}/metrics",
            f"  Logs       {logs}/",
            f"  Tenant     {DEMO_TENANT}   API key {api_key}",
            "",
            "Send an event:",
            f"  curl -sS -X POST {base}/api/events -H 'Authorization: Bearer {api_key}' "
            f"-H 'Content-Type: application/json' -d '{_SAMPLE_EVENT}'",
            "",
            "Press Ctrl-C to stop every process.",
            "",
        ]
        self.stdout.write("\n".join(lines))
        self.stdout.flush()
