"""The production stack as files: docker-compose.yml, the Dockerfile, deploy/nginx.conf.

No Docker engine runs here, so these tests read the files the way Compose and Docker would and
check what the stack promises: replicas, one image, production settings, health checks, start
order, the trusted-proxy address, the Azure profile. tests/ops/test_nginx.py runs the nginx config.
"""

from __future__ import annotations

import fnmatch
import ipaddress
import re
import shlex
import shutil
import subprocess
import sys
import tomllib
import zipfile
from pathlib import Path
from typing import Any

import pytest
import yaml

ROOT = Path(__file__).resolve().parent.parent
APP_SERVICES = ("api", "worker", "beat", "flower")
SECRETS = {
    "DJANGO_SECRET_KEY": "s3cret",
    "FLOWER_BASIC_AUTH": "admin:pw",
    "POSTGRES_PASSWORD": "pg-pw",
    "REDIS_PASSWORD": "redis-pw",
}
_VARIABLE = re.compile(r"\$\{(?P<name>[A-Z0-9_]+)(?:(?P<op>:?[-?])(?P<arg>(?:[^{}]|\{[^{}]*\})*))?\}")


def interpolate(value: str, env: dict[str, str]) -> str:
    """Compose's `${VAR}`, `${VAR:-default}` (nested too) and `${VAR:?error}`."""

    def replace(match: re.Match[str]) -> str:
        name, op, arg = match["name"], match["op"], match["arg"] or ""
        current = env.get(name)
        if op in (":-", "-") and (current is None or (op == ":-" and current == "")):
            return interpolate(arg, env)
        if op in (":?", "?") and not current:
            raise KeyError(f"{name}: {arg}")
        return current or ""

    return _VARIABLE.sub(replace, value)


@pytest.fixture(scope="module")
def compose() -> dict[str, Any]:
    return yaml.safe_load((ROOT / "docker-compose.yml").read_text())


@pytest.fixture(scope="module")
def services(compose: dict[str, Any]) -> dict[str, Any]:
    return dict(compose["services"])


def _env(service: dict[str, Any], given: dict[str, str] | None = None) -> dict[str, str]:
    given = {**SECRETS, **(given or {})}
    return {key: interpolate(str(value), given) for key, value in service.get("environment", {}).items()}


def _command(service: dict[str, Any]) -> list[str]:
    command = service["command"]
    return shlex.split(command) if isinstance(command, str) else [str(part) for part in command]


# --- the services ----------------------------------------------------------------------------------


def test_it_runs_the_whole_platform(services: dict[str, Any]) -> None:
    assert {"nginx", "api", "worker", "beat", "flower", "redis", "postgres", "migrate"} <= set(services)


def test_it_runs_four_api_replicas_two_workers_and_one_beat(services: dict[str, Any]) -> None:
    replicas = {name: services[name].get("deploy", {}).get("replicas", 1) for name in APP_SERVICES}
    assert replicas == {"api": 4, "worker": 2, "beat": 1, "flower": 1}


def test_it_builds_one_image_for_every_process(services: dict[str, Any]) -> None:
    images = {services[name]["image"] for name in (*APP_SERVICES, "migrate", "azure-provision")}
    assert len(images) == 1
    assert all(services[name]["build"] == "." for name in APP_SERVICES)
    assert _command(services["api"])[:2] == ["gunicorn", "cloudscale_project.wsgi:application"]
    assert _command(services["api"])[2:] == ["--config", "deploy/gunicorn.conf.py"]
    assert _command(services["worker"])[:4] == ["celery", "-A", "cloudscale_project", "worker"]
    assert _command(services["beat"])[:4] == ["celery", "-A", "cloudscale_project", "beat"]
    assert _command(services["flower"])[:4] == ["celery", "-A", "cloudscale_project", "flower"]


def test_it_binds_gunicorn_through_the_environment(services: dict[str, Any]) -> None:
    assert _env(services["api"])["GUNICORN_BIND"] == "0.0.0.0:8000"
    config = (ROOT / "deploy" / "gunicorn.conf.py").read_text()
    assert 'os.environ.get("GUNICORN_BIND"' in config


def test_it_runs_production_settings(services: dict[str, Any]) -> None:
    for name in (*APP_SERVICES, "migrate"):
        env = _env(services[name])
        assert env["CLOUDSCALE_ENV"] == "production", name
        assert env["DJANGO_SECRET_KEY"] == "s3cret", name
        assert env["DJANGO_ALLOWED_HOSTS"], name
        assert env["DATABASE_URL"] == "postgres://cloudscale:pg-pw@postgres:5432/cloudscale", name
        assert env["CLOUDSCALE_BROKER_URL"] == "redis://:redis-pw@redis:6379/0", name
        assert env["CLOUDSCALE_REDIS_URL"] == "redis://:redis-pw@redis:6379/1", name


def test_it_refuses_to_start_without_a_secret_key(services: dict[str, Any]) -> None:
    raw = services["api"]["environment"]["DJANGO_SECRET_KEY"]
    with pytest.raises(KeyError, match="DJANGO_SECRET_KEY"):
        interpolate(raw, {})


def test_it_trusts_forwarded_for_only_from_nginx(compose: dict[str, Any], services: dict[str, Any]) -> None:
    nginx_address = ipaddress.ip_address(services["nginx"]["networks"]["backend"]["ipv4_address"])
    (pool,) = compose["networks"]["backend"]["ipam"]["config"]
    subnet, dynamic = ipaddress.ip_network(pool["subnet"]), ipaddress.ip_network(pool["ip_range"])
    assert nginx_address in subnet
    assert nginx_address not in dynamic, "another container could be given nginx's address"
    for name in APP_SERVICES:
        trusted = [
            ipaddress.ip_network(cidr)
            for cidr in _env(services[name])["CLOUDSCALE_TRUSTED_PROXIES"].split(",")
        ]
        assert trusted == [ipaddress.ip_network(f"{nginx_address}/32")], name
        assert services[name]["networks"] == ["backend"], name


def test_it_checks_health_and_starts_in_order(services: dict[str, Any]) -> None:
    for name in ("nginx", "api", "flower", "redis", "postgres"):
        check = services[name]["healthcheck"]["test"]
        assert check[0] in {"CMD", "CMD-SHELL"}, name
    assert services["api"]["healthcheck"]["test"][-1].endswith("/readyz")
    assert services["nginx"]["depends_on"] == {"api": {"condition": "service_healthy"}}
    for name in APP_SERVICES:
        depends = services[name]["depends_on"]
        assert depends["migrate"] == {"condition": "service_completed_successfully"}, name
        assert depends["redis"] == {"condition": "service_healthy"}, name
        assert services[name]["restart"] == "unless-stopped", name  # e.g. a worker after a broker outage
    assert services["migrate"]["depends_on"] == {"postgres": {"condition": "service_healthy"}}


def test_it_keeps_flower_and_the_api_off_the_public_ports(services: dict[str, Any]) -> None:
    assert services["flower"]["ports"] == ["127.0.0.1:${FLOWER_PORT:-5555}:5555"]
    assert _env(services["flower"])["FLOWER_BASIC_AUTH"] == "admin:pw"
    assert "ports" not in services["api"]
    assert services["nginx"]["ports"] == ["${CLOUDSCALE_HTTP_PORT:-8000}:80"]
    assert services["nginx"]["volumes"] == ["./deploy/nginx.conf:/etc/nginx/nginx.conf:ro"]


def test_it_has_an_azure_profile(services: dict[str, Any]) -> None:
    provision = services["azure-provision"]
    assert provision["profiles"] == ["azure"]
    assert "provision_servicebus" in " ".join(_command(provision))
    assert "provision_cosmos" in " ".join(_command(provision))
    azure = {
        "CLOUDSCALE_BROKER_URL": "azureservicebus://DefaultAzureCredential@cloudscale-prod",
        "CLOUDSCALE_EVENT_STORE": "cosmos",
        "COSMOS_ENDPOINT": "https://cloudscale.documents.azure.com:443/",
        "AZURE_CLIENT_ID": "00000000-0000-0000-0000-000000000001",
    }
    for name in (*APP_SERVICES, "azure-provision"):
        env = _env(services[name], azure)
        assert {key: env[key] for key in azure} == azure, name
    assert _env(provision)["CLOUDSCALE_EVENT_STORE"] == "cosmos"
    for name in APP_SERVICES:  # the profile's provisioning runs first, and only when enabled
        assert services[name]["depends_on"]["azure-provision"] == {
            "condition": "service_completed_successfully",
            "required": False,
        }
    example = (ROOT / "deploy" / "azure.env.example").read_text()
    assert "CLOUDSCALE_BROKER_URL=azureservicebus://" in example
    assert "COSMOS_ENDPOINT=" in example


def test_it_consumes_both_queues_in_workers(services: dict[str, Any]) -> None:
    command = [interpolate(part, {}) for part in _command(services["worker"])]
    assert command[command.index("-Q") + 1] == "events-ingestion,cloudscale-ops"
    assert "--autoscale" in command


# --- the image -------------------------------------------------------------------------------------


def _dockerfile_instructions() -> list[tuple[str, str]]:
    text = (ROOT / "Dockerfile").read_text().replace("\\\n", " ")
    lines = [line.strip() for line in text.splitlines() if line.strip() and not line.strip().startswith("#")]
    return [(line.split(None, 1)[0].upper(), line.split(None, 1)[1]) for line in lines]


def test_it_builds_a_slim_non_root_image() -> None:
    instructions = _dockerfile_instructions()
    froms = [arg for op, arg in instructions if op == "FROM"]
    assert froms and all(arg.split()[0] == "python:3.11-slim" for arg in froms)
    final_stage = instructions[max(i for i, (op, _) in enumerate(instructions) if op == "FROM") :]
    users = [arg for op, arg in final_stage if op == "USER"]
    assert users and users[-1].split(":")[0] not in {"root", "0"}
    assert not any(op == "ADD" for op, _ in instructions)
    entrypoint = [arg for op, arg in final_stage if op == "ENTRYPOINT"]
    assert entrypoint == ['["/app/deploy/docker-entrypoint.sh"]']
    cmd = [arg for op, arg in final_stage if op == "CMD"]
    assert cmd and "gunicorn" in cmd[-1] and "deploy/gunicorn.conf.py" in cmd[-1]
    # Build tools stay in the build stage: the runtime stage only copies the virtualenv.
    assert any(op == "COPY" and arg.startswith("--from=build /opt/venv") for op, arg in final_stage)


def _our_packages() -> set[str]:
    """The project's top-level packages: every app of INSTALLED_APPS that lives here, and the project."""
    from django.conf import settings

    apps = {app.split(".")[0] for app in settings.INSTALLED_APPS}
    return {name for name in apps | {"cloudscale_project"} if (ROOT / name / "__init__.py").is_file()}


def test_the_image_holds_every_app_the_settings_install() -> None:
    """An app missing from the image stops every process at start-up (Django imports them all)."""
    instructions = _dockerfile_instructions()
    second_from = [i for i, (op, _) in enumerate(instructions) if op == "FROM"][1]
    copied = {
        arg.split()[0] for op, arg in instructions[:second_from] if op == "COPY" and not arg.startswith("--")
    }
    ignored = {line.strip() for line in (ROOT / ".dockerignore").read_text().splitlines()}
    included = tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["setuptools"]["packages"]["find"]
    packages = _our_packages()

    assert {"tenants", "events", "carts", "compat", "ops", "benchmarks"} <= packages
    assert packages <= copied, sorted(packages - copied)
    assert not packages & ignored, sorted(packages & ignored)
    assert all(any(fnmatch.fnmatch(name, pattern) for pattern in included["include"]) for name in packages)


@pytest.mark.slow
def test_the_wheel_carries_the_apps_templates_and_static_files(tmp_path: Path) -> None:
    """The image installs the project as a wheel (`pip install --no-deps .`), so whatever the wheel
    leaves out is missing in production: the admin's dead-letter form, the operator overview."""
    packages = _our_packages()
    tracked = subprocess.run(
        ["git", "ls-files", *sorted(packages)], cwd=ROOT, capture_output=True, text=True, check=True
    ).stdout.split()
    data_files = {path for path in tracked if not path.endswith(".py")}
    source = tmp_path / "src"
    source.mkdir()
    for name in ("pyproject.toml", "README.md"):
        shutil.copy(ROOT / name, source / name)
    for package in packages:
        shutil.copytree(ROOT / package, source / package, ignore=shutil.ignore_patterns("__pycache__"))
    built = subprocess.run(
        [sys.executable, "-m", "pip", "wheel", "--quiet", "--no-deps", str(source), "-w", str(tmp_path / "dist")],
        capture_output=True, text=True, timeout=600, check=False,
    )  # fmt: skip
    assert built.returncode == 0, built.stderr[-3000:]
    (wheel,) = (tmp_path / "dist").glob("cloudscale-*.whl")
    names = set(zipfile.ZipFile(wheel).namelist())

    assert {"ops/templates/ops/overview.html", "ops/static/ops/vendor/chart.umd.min.js"} <= data_files
    assert data_files <= names, sorted(data_files - names)
    assert {name.split("/")[0] for name in names} >= packages


def test_it_keeps_local_state_and_secrets_out_of_the_build_context() -> None:
    ignored = {line.strip() for line in (ROOT / ".dockerignore").read_text().splitlines()}
    assert {".git", ".venv", ".state", "node_modules", "deploy/*.env", "tests"} <= ignored


# --- nginx -----------------------------------------------------------------------------------------


def test_it_passes_the_client_address_and_fails_over_in_nginx() -> None:
    conf = (ROOT / "deploy" / "nginx.conf").read_text()
    assert "proxy_set_header X-Forwarded-For $proxy_add_x_forwarded_for;" in conf
    assert re.search(r"server api:8000 [^;]*max_fails=\d+ [^;]*fail_timeout=\d+s", conf)
    assert "proxy_next_upstream error timeout" in conf
    assert "non_idempotent" not in conf  # a POST that reached a replica is never sent twice


# --- secrets ----------------------------------------------------------------------------------------


@pytest.mark.parametrize("secret", sorted(SECRETS))
def test_it_refuses_to_start_without_each_secret(services: dict[str, Any], secret: str) -> None:
    """No default password: compose stops with the variable's name if one is not set."""
    given = {name: value for name, value in SECRETS.items() if name != secret}
    refused = []
    for name, service in services.items():
        values = [str(value) for value in service.get("environment", {}).values()]
        values += _command(service) if "command" in service else []
        try:
            for value in values:
                interpolate(value, given)
        except KeyError as exc:
            assert secret in str(exc)
            refused.append(name)
    assert refused, f"{secret} has a default somewhere"


def test_no_secret_is_on_a_command_line(services: dict[str, Any]) -> None:
    """Host `ps` shows every container's command line: secrets go in the environment or files."""
    for name, service in services.items():
        if "command" not in service:
            continue
        command = " ".join(interpolate(part, SECRETS) for part in _command(service))
        for value in SECRETS.values():
            assert value not in command, (name, command)


def test_redis_requires_its_password(services: dict[str, Any]) -> None:
    redis_service = services["redis"]
    env = _env(redis_service)
    assert env["REDIS_PASSWORD"] == "redis-pw"
    assert env["REDISCLI_AUTH"] == "redis-pw"  # the health check's redis-cli authenticates with it
    script = _command(redis_service)[-1]
    assert "requirepass" in script and "$$REDIS_PASSWORD" in script
    assert "exec redis-server /tmp/redis-auth.conf" in script
    assert services["redis"]["healthcheck"]["test"] == ["CMD", "redis-cli", "ping"]
    assert "ports" not in redis_service and "ports" not in services["postgres"]


def test_metrics_through_nginx_only_from_loopback_and_the_compose_containers(
    compose: dict[str, Any],
) -> None:
    conf = (ROOT / "deploy" / "nginx.conf").read_text()
    location = re.search(r"location = /metrics \{(?P<body>[^}]*)\}", conf)
    assert location
    rules = [line.strip().rstrip(";").split() for line in location["body"].splitlines()]
    allowed = [ipaddress.ip_network(rule[1]) for rule in rules if rule and rule[0] == "allow"]
    assert [rule for rule in rules if rule and rule[0] == "deny"] == [["deny", "all"]]
    (pool,) = compose["networks"]["backend"]["ipam"]["config"]
    containers, subnet = ipaddress.ip_network(pool["ip_range"]), ipaddress.ip_network(pool["subnet"])
    gateway = next(subnet.hosts())  # where Docker's published ports deliver outside clients from
    for network in allowed:
        assert network.subnet_of(containers) or network == ipaddress.ip_network("127.0.0.1/32"), network  # type: ignore[arg-type]
        assert gateway not in network
