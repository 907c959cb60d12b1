"""The import graph of each command: a command imports only what it needs, so the CLI starts fast.

Each case runs `python -X importtime -m jobctl ...` as a fresh process and reads the modules it
imported from that report. These are assertions on the graph, never on timings (see bench/cli_latency.py).
"""

from __future__ import annotations

import json
import re
import subprocess
import sys
from collections.abc import Callable, Iterable

import pytest

from tests.conftest import cli_env

# What a command that only parses arguments or prints help must not load.
BACKEND_PACKAGES = (
    "sqlalchemy",
    "sqlmodel",
    "pydantic",
    "pydantic_core",
    "pydantic_settings",
    "redis",
    "rq",
    "rich",
    "alembic",
    "croniter",
    "psycopg2",
    "rq_dashboard",
)
# What reading the store (list, show, refused cancel) must not load: the write side and the worker side.
NOT_FOR_READS = (
    "rq",
    "alembic",
    "croniter",
    "rq_dashboard",
    "jobctl.worker",
    "jobctl.runtime",
    "jobctl.shell",
    "jobctl.tasks",
    "jobctl.options",
    "jobctl.dependencies",
    "jobctl.scheduling",
)
OTHER_DIALECT = {
    "sqlite": ("sqlalchemy.dialects.postgresql", "psycopg2"),
    "postgres": ("sqlalchemy.dialects.sqlite",),
}

IMPORT_LINE = re.compile(r"^import time:\s+\d+ \|\s+\d+ \|\s*(\S+)\s*$")


def imports(
    *args: str, env: dict[str, str] | None = None, code: str | None = None
) -> tuple[set[str], subprocess.CompletedProcess[str]]:
    """The modules a fresh `jobctl ARGS...` (or `python -c CODE`) imports, and the finished process."""
    target = ["-c", code] if code is not None else ["-m", "jobctl", *args]
    proc = subprocess.run(
        [sys.executable, "-X", "importtime", *target],
        capture_output=True,
        text=True,
        timeout=120,
        env=env if env is not None else cli_env(),
    )
    modules = {m.group(1) for line in proc.stderr.splitlines() if (m := IMPORT_LINE.match(line))}
    assert "jobctl" in modules or code is not None, proc.stderr[-2000:]
    return modules, proc


def loaded(modules: set[str], packages: Iterable[str]) -> list[str]:
    """The packages (or modules) of `packages` that appear in `modules`, submodules included."""
    return sorted(p for p in packages if any(m == p or m.startswith(p + ".") for m in modules))


def user_output(proc: subprocess.CompletedProcess[str]) -> str:
    """stderr without the import-time report."""
    return "\n".join(line for line in proc.stderr.splitlines() if not line.startswith("import time:"))


@pytest.mark.parametrize(
    "args",
    [
        ["--help"],
        ["list", "--help"],
        ["show", "--help"],
        ["submit", "--help"],
        ["cancel", "--help"],
        ["watch", "--help"],
        ["worker", "--help"],
        ["dashboard", "--help"],
        ["schedule", "--help"],
        ["schedule", "add", "--help"],
        ["db", "upgrade", "--help"],
    ],
    ids=" ".join,
)
def test_help_imports_only_typer_and_the_cli(args: list[str]) -> None:
    modules, proc = imports(*args)
    assert proc.returncode == 0, user_output(proc)
    assert "Usage:" in proc.stdout
    assert loaded(modules, BACKEND_PACKAGES) == []
    # No use case, store or queue module either: only the command definitions and errors.
    assert sorted(m for m in modules if m.startswith("jobctl.") and not m.startswith("jobctl.cli")) == [
        "jobctl.errors"
    ]


def test_completing_a_command_name_imports_no_backend() -> None:
    env = cli_env({"_JOBCTL_COMPLETE": "complete_bash", "COMP_WORDS": "jobctl li", "COMP_CWORD": "1"})
    modules, proc = imports(env=env)
    assert proc.returncode == 0, user_output(proc)
    assert proc.stdout.split() == ["list"]
    assert loaded(modules, BACKEND_PACKAGES) == []


def test_the_worker_side_never_imports_the_cli() -> None:
    modules, proc = imports(code="import jobctl.worker, jobctl.runtime, jobctl.tasks")
    assert proc.returncode == 0, user_output(proc)
    assert loaded(modules, ("typer", "rich", "jobctl.cli")) == []


@pytest.fixture
def stored(env: dict[str, str], run: Callable[..., subprocess.CompletedProcess[str]]) -> dict[str, str]:
    """Job ids in a store whose schema is in place: `done` (cancelled, terminal) and `waiting` (pending)."""
    ids = {}
    for name in ("done", "waiting"):
        proc = run("submit", name, "-t", "noop")
        assert proc.returncode == 0, proc.stderr
        ids[name] = proc.stdout.strip()
    assert run("cancel", ids["done"]).returncode == 0
    return ids


def test_reading_terminal_jobs_needs_neither_redis_nor_the_write_side(
    backend: str, env: dict[str, str], stored: dict[str, str]
) -> None:
    job_id = stored["done"]
    for args in (["list", "-s", "cancelled"], ["show", job_id]):
        modules, proc = imports(*args)
        assert proc.returncode == 0, user_output(proc)
        assert f"{job_id}" in proc.stdout
        assert loaded(modules, (*NOT_FOR_READS, "redis", *OTHER_DIALECT[backend])) == [], args
    # JSON and bare ids are for scripts: no rich either.
    for args in (["list", "-s", "cancelled", "--json"], ["list", "-o", "ids"], ["show", job_id, "--json"]):
        modules, proc = imports(*args)
        assert proc.returncode == 0, user_output(proc)
        assert f"{job_id}" in proc.stdout
        assert loaded(modules, (*NOT_FOR_READS, "redis", "rich", *OTHER_DIALECT[backend])) == [], args


def test_a_page_without_running_jobs_needs_no_redis(
    backend: str, env: dict[str, str], stored: dict[str, str]
) -> None:
    modules, proc = imports("list")  # `done` and the pending `waiting`: no progress lives in Redis
    assert proc.returncode == 0, user_output(proc)
    assert "waiting" in proc.stdout
    assert loaded(modules, (*NOT_FOR_READS, "redis", *OTHER_DIALECT[backend])) == []


def test_live_state_is_read_with_redis_alone(
    backend: str, env: dict[str, str], stored: dict[str, str]
) -> None:
    import redis

    from jobctl import lifecycle

    job_id = int(stored["waiting"])
    modules, proc = imports("show", str(job_id))
    assert proc.returncode == 0, user_output(proc)
    assert "position 1 in queue" in proc.stdout  # a pending job's place comes from Redis
    assert "redis" in modules
    assert loaded(modules, (*NOT_FOR_READS, *OTHER_DIALECT[backend])) == []

    # Running, as a worker would have it: the row claimed, the progress in its RQ job's meta.
    running = lifecycle.claim(job_id, 1, "test-worker")
    assert running is not None
    progress = {"progress": {"current": 3, "total": 7, "message": "working"}}
    redis.Redis.from_url(env["REDIS_URL"]).hset(f"rq:job:{running.task_id}", "meta", json.dumps(progress))
    modules, proc = imports("list")
    assert proc.returncode == 0, user_output(proc)
    assert re.search(rf"^\s*{job_id}\s+waiting\s+noop\s+processing\s+3/7\s", proc.stdout, re.M), proc.stdout
    assert "redis" in modules
    assert loaded(modules, (*NOT_FOR_READS, *OTHER_DIALECT[backend])) == []


def test_refused_and_unknown_cancels_stay_in_the_store(
    backend: str, env: dict[str, str], stored: dict[str, str]
) -> None:
    for args, code in ((["cancel", stored["done"]], 1), (["cancel", "999999"], 3)):
        modules, proc = imports(*args)
        assert proc.returncode == code, user_output(proc)
        assert user_output(proc).startswith("Error: ")
        assert loaded(modules, (*NOT_FOR_READS, "redis", *OTHER_DIALECT[backend])) == [], args


def test_submit_imports_no_schema_tools_schedules_worker_or_rich(
    backend: str, env: dict[str, str], stored: dict[str, str]
) -> None:
    unwanted = (
        "alembic",
        "croniter",
        "rich",  # it prints an id, or JSON
        "rq_dashboard",
        "jobctl.worker",
        "jobctl.scheduling",
        "jobctl.dashboard",
    )
    modules, proc = imports("submit", "another", "-t", "noop")
    assert proc.returncode == 0, user_output(proc)
    assert proc.stdout.strip().isdigit()
    assert loaded(modules, (*unwanted, *OTHER_DIALECT[backend])) == []
    modules, proc = imports("submit", "as json", "-t", "noop", "--json")
    assert proc.returncode == 0, user_output(proc)
    assert json.loads(proc.stdout)["name"] == "as json"
    assert loaded(modules, (*unwanted, *OTHER_DIALECT[backend])) == []
