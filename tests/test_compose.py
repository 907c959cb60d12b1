"""compose.yml, .env.example, Dockerfile; every jobctl service's command run here against real servers."""

from __future__ import annotations

import os
import re
import socket
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import pytest

from tests.conftest import HAVE_POSTGRES, POSTGRES_ADMIN_URL, postgres_database, wait_for

ROOT = Path(__file__).resolve().parent.parent
JOBCTL_SERVICES = {"migrate", "worker", "dashboard"}
_INTERPOLATION = re.compile(
    r"\$\$|\$\{(?P<name>[A-Za-z_][A-Za-z0-9_]*)(?:(?P<op>:?[-?])(?P<arg>[^}]*))?\}|\$(?P<bare>[A-Za-z_]\w*)"
)


def env_example() -> dict[str, str]:
    """The settings .env.example sets (commented-out lines keep jobctl's defaults)."""
    values = {}
    for line in (ROOT / ".env.example").read_text().splitlines():
        if line.strip() and not line.lstrip().startswith("#"):
            key, _, value = line.partition("=")
            values[key.strip()] = value.strip()
    return values


def interpolate(value: Any, variables: dict[str, str]) -> Any:
    """Compose's variable substitution (`${VAR}`, `${VAR:-default}`, `${VAR-default}`, `$$`), everywhere."""
    if isinstance(value, dict):
        return {k: interpolate(v, variables) for k, v in value.items()}
    if isinstance(value, list):
        return [interpolate(v, variables) for v in value]
    if not isinstance(value, str):
        return value

    def substitute(match: re.Match[str]) -> str:
        if match.group(0) == "$$":
            return "$"
        name = match["name"] or match["bare"]
        op, arg = match["op"], match["arg"] or ""
        current = variables.get(name)
        if op == ":-":
            return current or arg
        if op == "-":
            return arg if current is None else current
        if op in (":?", "?") and not current:
            raise AssertionError(f"compose.yml requires {name}: {arg}")
        return current or ""

    return _INTERPOLATION.sub(substitute, value)


def compose(variables: dict[str, str] | None = None) -> dict[str, Any]:
    """compose.yml as `docker compose config` would see it with `.env` copied from .env.example."""
    import yaml

    document = yaml.safe_load((ROOT / "compose.yml").read_text())
    return dict(interpolate(document, env_example() if variables is None else variables))


def seconds(duration: str) -> float:
    """A compose duration (`1m30s`, `90s`, `2m`) in seconds."""
    units = {"h": 3600, "m": 60, "s": 1, "ms": 0.001}
    parts = re.findall(r"(\d+(?:\.\d+)?)(ms|h|m|s)", duration)
    assert parts and "".join(n + u for n, u in parts) == duration, duration
    return sum(float(n) * units[u] for n, u in parts)


# ---- the files, read ----


def test_env_example_documents_every_setting():
    from jobctl.config import Settings

    text = (ROOT / ".env.example").read_text()
    documented = set(re.findall(r"^#? ?([A-Z][A-Z0-9_]+)=", text, flags=re.M))
    aliases = {field.validation_alias.choices[0] for field in Settings.model_fields.values()}  # type: ignore[union-attr]
    assert aliases - documented == set()
    # every value it sets is one jobctl accepts
    settings = Settings(_env_file=None, **{k: v for k, v in env_example().items() if k in aliases})  # type: ignore[call-arg]
    assert settings.resolved_redis_url() == "redis://:change-me-dev-only@127.0.0.1:6379/0"
    assert settings.dashboard_username == "admin"


def test_every_variable_compose_uses_is_in_env_example():
    used = set(re.findall(r"\$\{([A-Za-z_][A-Za-z0-9_]*)", (ROOT / "compose.yml").read_text()))
    assert used - set(env_example()) == set()


def test_compose_backends_are_pinned_persistent_and_checked():
    services = compose()["services"]
    assert set(services) == {"redis", "postgres", *JOBCTL_SERVICES}
    for name in ("redis", "postgres"):
        service = services[name]
        tag = service["image"].partition(":")[2]
        assert re.match(r"^\d+", tag), f"{name} must pin a major version, not {tag or 'latest'}"
        assert service["healthcheck"]["test"], name
        volume = service["volumes"][0].split(":")[0]
        assert volume in compose()["volumes"], f"{name} keeps its data in a named volume"
    redis_command = services["redis"]["command"]
    assert redis_command[redis_command.index("--appendonly") + 1] == "yes"
    assert redis_command[redis_command.index("--requirepass") + 1] == env_example()["REDIS_PASSWORD"]
    # nothing is published beyond this machine unless .env says so
    for service in services.values():
        for port in service.get("ports", []):
            assert port.startswith("127.0.0.1:"), port


def test_compose_jobctl_services_start_in_order_and_scale():
    services = compose()["services"]
    for name in JOBCTL_SERVICES:
        service = services[name]
        assert service["command"][0] == "jobctl" and service["build"] == "."
        assert service["image"] == services["worker"]["image"]
    assert services["migrate"]["command"] == ["jobctl", "db", "upgrade"]
    assert services["migrate"]["restart"] == "no"
    assert services["migrate"]["depends_on"]["postgres"]["condition"] == "service_healthy"
    worker = services["worker"]
    assert worker["depends_on"]["migrate"]["condition"] == "service_completed_successfully"
    assert worker["depends_on"]["redis"]["condition"] == "service_healthy"
    # `--scale worker=4` needs no fixed name and no host port
    assert "container_name" not in worker and "ports" not in worker
    # a stop gives the current job time to finish: far longer than a cancelled job's grace
    grace = float(env_example()["JOBCTL_CANCEL_GRACE"])
    assert seconds(worker["stop_grace_period"]) >= max(30, 10 * grace)
    dashboard = services["dashboard"]
    assert dashboard["environment"]["JOBCTL_DASHBOARD_PASSWORD"]
    # a jobctl setting put in .env reaches the containers
    from jobctl.config import Settings

    aliases = {field.validation_alias.choices[0] for field in Settings.model_fields.values()}  # type: ignore[union-attr]
    knobs = {a for a in aliases if a.startswith("JOBCTL_") and not a.startswith("JOBCTL_DASHBOARD_")}
    assert knobs - {"JOBCTL_DATA_DIR"} - set(worker["environment"]) == set()


def test_dockerfile_installs_the_repository_and_runs_unprivileged():
    text = (ROOT / "Dockerfile").read_text()
    bases = re.findall(r"^ARG PYTHON_IMAGE=(\S+)", text, flags=re.M)
    assert bases and re.match(r"python:3\.\d+-slim", bases[0])
    assert "COPY jobctl ./jobctl" in text and "pip wheel" in text
    users = re.findall(r"^USER (\S+)", text, flags=re.M)
    assert users and users[-1] not in ("root", "0")
    ignored = (ROOT / ".dockerignore").read_text().splitlines()
    assert ignored[ignored.index("*") :][:4] == ["*", "!pyproject.toml", "!README.md", "!jobctl/"]


# ---- the services' commands, run here against real servers ----


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


@pytest.fixture
def stack(tmp_path: Path, background: Any) -> Iterator[dict[str, Any]]:
    """compose's Redis command on a free port, a fresh PostgreSQL database, and the services to run."""
    from jobctl.embedded import find_redis_server

    if not HAVE_POSTGRES:
        pytest.skip("PostgreSQL server not available")
    binary = find_redis_server()
    if binary is None:
        pytest.skip("no redis-server binary")
    services = compose()["services"]
    port = free_port()
    redis_cmd = [binary, *services["redis"]["command"][1:], "--port", str(port), "--bind", "127.0.0.1"]
    redis_cmd += ["--dir", str(tmp_path), "--save", ""]
    redis = background(redis_cmd)
    redis.wait_for_output("Ready to accept connections")

    admin = urlsplit(POSTGRES_ADMIN_URL)
    with postgres_database("jobctl_compose") as database:
        # the containers' names for the servers become this machine's; the database is this test's own
        rewrites = {
            "REDIS_HOST": "127.0.0.1",
            "REDIS_PORT": str(port),
            "POSTGRES_SERVER": admin.hostname or "127.0.0.1",
            "POSTGRES_PORT": str(admin.port or 5432),
            "POSTGRES_USER": admin.username or "postgres",
            "POSTGRES_DB": database,
        }
        if admin.password:
            rewrites["POSTGRES_PASSWORD"] = admin.password
        base = {
            k: v
            for k, v in os.environ.items()
            if not k.startswith(("JOBCTL_", "REDIS_", "POSTGRES_")) and k != "DATABASE_URL"
        }
        base["JOBCTL_DATA_DIR"] = str(tmp_path / "data")  # as the image's ENV does
        base["PYTHONPATH"] = str(ROOT)  # this checkout's jobctl, as the image has it installed
        envs = {}
        for name in JOBCTL_SERVICES:
            service_env = {k: str(v) for k, v in services[name]["environment"].items()}
            assert service_env["REDIS_HOST"] == "redis" and service_env["POSTGRES_SERVER"] == "postgres"
            envs[name] = {**base, **service_env, **rewrites}
        yield {"services": services, "env": envs, "database": database, "cwd": tmp_path}


def local(command: list[str]) -> list[str]:
    """A service's command line, with this interpreter's jobctl."""
    assert command[0] == "jobctl"
    return [sys.executable, "-m", "jobctl", *command[1:]]


def test_every_jobctl_service_runs_against_real_redis_and_postgres(stack, background):
    import base64
    import urllib.error
    import urllib.request

    services, envs, cwd = stack["services"], stack["env"], stack["cwd"]

    def once(command: list[str], service: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            local(command), env=envs[service], cwd=cwd, capture_output=True, text=True, timeout=60
        )

    migrate = once(services["migrate"]["command"], "migrate")
    assert migrate.returncode == 0, migrate.stderr
    assert "database schema at revision" in migrate.stderr

    worker = background(local(services["worker"]["command"]), env=envs["worker"], cwd=cwd)
    worker.wait_for_output("Listening on")

    # what `docker compose run --rm worker jobctl submit ...` would run
    args = ["-a", "steps=2", "-a", "min_delay=0", "-a", "max_delay=0.05", "-a", "failure_rate=0"]
    submitted = once(["jobctl", "submit", "through compose", *args], "worker")
    assert submitted.returncode == 0, submitted.stderr
    job_id = int(submitted.stdout)

    def row() -> tuple[str, Any]:
        import psycopg2

        conn = psycopg2.connect(POSTGRES_ADMIN_URL.rsplit("/", 1)[0] + "/" + stack["database"])
        try:
            with conn.cursor() as cur:
                cur.execute("SELECT status, progress FROM job WHERE id = %s", (job_id,))
                status, progress = cur.fetchone()
                return str(status).lower(), progress
        finally:
            conn.close()

    wait_for(lambda: row()[0] == "completed", 30)
    assert row()[1]["current"] == 2

    command = local(services["dashboard"]["command"])
    # a container's 0.0.0.0 is its own network; here it stays on loopback, on a free port
    command[command.index("--host") + 1] = "127.0.0.1"
    command[command.index("--port") + 1] = "0"
    dashboard = background(command, env=envs["dashboard"], cwd=cwd)
    out = dashboard.wait_for_output("Press Ctrl-C to stop.")
    url = re.search(r"Dashboard at (http://\S+)", out).group(1)  # type: ignore[union-attr]
    assert "Basic auth required" in out and envs["dashboard"]["REDIS_PASSWORD"] not in out
    with pytest.raises(urllib.error.HTTPError) as refused:
        urllib.request.urlopen(url + "0/data/queues.json", timeout=10)
    assert refused.value.code == 401
    user, password = (
        envs["dashboard"]["JOBCTL_DASHBOARD_USERNAME"],
        envs["dashboard"]["JOBCTL_DASHBOARD_PASSWORD"],
    )
    token = base64.b64encode(f"{user}:{password}".encode()).decode()
    request = urllib.request.Request(url + "0/data/queues.json", headers={"Authorization": f"Basic {token}"})
    with urllib.request.urlopen(request, timeout=10) as response:
        assert response.status == 200 and b'"name": "default"' in response.read()

    # `docker compose stop`: SIGTERM, and every service exits cleanly
    assert dashboard.stop() == 0
    assert worker.stop(timeout=30) == 0
