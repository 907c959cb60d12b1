"""Shared fixtures: a private Redis database, SQLite and PostgreSQL stores, real workers, the CLI."""

from __future__ import annotations

import contextlib
import json
import os
import signal
import subprocess
import sys
import time
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

IN_CI = os.environ.get("CI", "").lower() in ("1", "true", "yes")
REDIS_SERVER_URL = os.environ.get("JOBCTL_TEST_REDIS_URL", "redis://127.0.0.1:6379")
POSTGRES_ADMIN_URL = os.environ.get(
    "JOBCTL_TEST_POSTGRES_URL", "postgresql://postgres@127.0.0.1:5432/postgres"
)
LOCK_KEY = "jobctl:test-lock"
RQ_SCRIPT = os.path.join(os.path.dirname(sys.executable), "rq")  # RQ's command line, beside this Python
TOKEN = f"{os.getpid()}-{uuid.uuid4().hex}"
SKIPPED_BACKENDS: list[str] = []


def _redis_server_answers() -> bool:
    import redis

    try:
        redis.Redis.from_url(REDIS_SERVER_URL, socket_connect_timeout=1).ping()
        return True
    except redis.RedisError:
        return False


def _postgres_answers() -> bool:
    import psycopg2

    try:
        psycopg2.connect(POSTGRES_ADMIN_URL, connect_timeout=2).close()
        return True
    except psycopg2.Error:
        return False


HAVE_REDIS = _redis_server_answers()
HAVE_POSTGRES = _postgres_answers()
if not HAVE_REDIS:
    SKIPPED_BACKENDS.append(f"Redis server at {REDIS_SERVER_URL} (using the embedded Redis instead)")
if not HAVE_POSTGRES:
    SKIPPED_BACKENDS.append(f"PostgreSQL at {POSTGRES_ADMIN_URL} (PostgreSQL-backed tests skipped)")


# Run in the background from a shell (`pytest &`), this process starts with SIGINT ignored, and the
# commands the tests start would inherit that: the Ctrl-C tests could not stop them. A handler, unlike
# SIG_IGN, is not inherited across exec.
if signal.getsignal(signal.SIGINT) is signal.SIG_IGN:
    signal.signal(signal.SIGINT, signal.default_int_handler)


def pytest_sessionstart(session: pytest.Session) -> None:
    if IN_CI and SKIPPED_BACKENDS:
        pytest.exit("CI=true but these servers do not answer: " + "; ".join(SKIPPED_BACKENDS), returncode=4)


def pytest_terminal_summary(terminalreporter: Any) -> None:
    if SKIPPED_BACKENDS:
        terminalreporter.write_sep("-", "backends not available")
        for line in SKIPPED_BACKENDS:
            terminalreporter.write_line(f"skipped: {line}")
    else:
        terminalreporter.write_line("backends: real Redis server and PostgreSQL server used")


@pytest.fixture(scope="session")
def redis_url(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """A Redis database no other test run uses: the real server's, or the embedded server's."""
    import redis

    if not HAVE_REDIS:
        from jobctl.embedded import ensure_embedded_redis

        url = ensure_embedded_redis(tmp_path_factory.mktemp("embedded-redis"))
        yield url
        return
    token = TOKEN
    for db in range(1, 16):
        conn = redis.Redis.from_url(f"{REDIS_SERVER_URL}/{db}")
        if conn.set(LOCK_KEY, token, nx=True, ex=6 * 3600):
            yield f"{REDIS_SERVER_URL}/{db}"
            if conn.get(LOCK_KEY) == token.encode():
                conn.flushdb()
            conn.close()
            return
    pytest.fail("every Redis database 1-15 is claimed by another test run")


@contextlib.contextmanager
def postgres_database(prefix: str) -> Iterator[str]:
    """A new PostgreSQL database on the test server (its name), dropped afterwards."""
    import psycopg2

    name = f"{prefix}_{os.getpid()}_{uuid.uuid4().hex[:8]}"
    admin = psycopg2.connect(POSTGRES_ADMIN_URL)
    admin.autocommit = True
    try:
        with admin.cursor() as cur:
            cur.execute(f'CREATE DATABASE "{name}"')
        yield name
    finally:
        with admin.cursor() as cur:
            cur.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
        admin.close()


def postgres_database_url(name: str) -> str:
    """The URL of database `name` on the test server."""
    return POSTGRES_ADMIN_URL.rsplit("/", 1)[0] + "/" + name


@pytest.fixture(scope="session")
def postgres_url() -> Iterator[str]:
    """A PostgreSQL database created for this test run and dropped after it."""
    if not HAVE_POSTGRES:
        pytest.skip("PostgreSQL server not available")
    with postgres_database("jobctl_test") as name:
        yield postgres_database_url(name)


def reset_caches() -> None:
    """Make jobctl re-read settings and reconnect."""
    from jobctl import queue, store
    from jobctl.config import get_settings

    get_settings.cache_clear()
    store.reset_engines()
    queue.reset_connections()


@pytest.fixture(params=["sqlite", pytest.param("postgres", marks=pytest.mark.postgres)])
def backend(request: pytest.FixtureRequest) -> str:
    """Each test using it runs on SQLite and on PostgreSQL."""
    return str(request.param)


@pytest.fixture
def env(
    backend: str,
    request: pytest.FixtureRequest,
    redis_url: str,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> Iterator[dict[str, str]]:
    """Environment for jobctl (this process and subprocesses): private Redis db, empty store."""
    import redis

    for name in list(os.environ):
        if name.startswith(("JOBCTL_", "POSTGRES_", "REDIS_")) or name == "DATABASE_URL":
            monkeypatch.delenv(name, raising=False)
    # pytest-xdist workers set COLUMNS/LINES; commands under test size themselves like a user's shell.
    monkeypatch.delenv("COLUMNS", raising=False)
    monkeypatch.delenv("LINES", raising=False)
    data_dir = tmp_path / "data"
    values = {
        "JOBCTL_DATA_DIR": str(data_dir),
        "REDIS_URL": redis_url,
        "JOBCTL_TASKS": "tests.sample_tasks",
        "JOBCTL_PROGRESS_INTERVAL": "0.05",
        "PYTHONPATH": str(Path(__file__).resolve().parent.parent),
        "PYTHONUNBUFFERED": "1",
    }
    if backend == "postgres":
        values["DATABASE_URL"] = request.getfixturevalue("postgres_url")
    else:
        values["DATABASE_URL"] = f"sqlite:///{data_dir / 'jobctl.db'}"
    for key, value in values.items():
        monkeypatch.setenv(key, value)
    monkeypatch.chdir(tmp_path)
    conn = redis.Redis.from_url(redis_url)
    # This run's own database only, emptied and re-claimed in one transaction: another run looking
    # for a free database never sees it unclaimed.
    with conn.pipeline(transaction=True) as pipe:
        pipe.flushdb().set(LOCK_KEY, TOKEN, ex=6 * 3600).execute()
    conn.close()
    reset_caches()
    from jobctl import schema, store

    if backend == "postgres":
        schema.upgrade_schema()
        with store.begin() as conn:
            # CASCADE: tables that reference job (logs) are emptied with it.
            conn.exec_driver_sql("TRUNCATE job, job_dependency, schedule RESTART IDENTITY CASCADE")
    yield dict(os.environ)
    reset_caches()
    kill_leftovers(f"JOBCTL_DATA_DIR={data_dir}")


def kill_leftovers(marker: str) -> None:
    """SIGKILL processes this test started that outlived it (a work-horse whose worker was killed keeps
    running in a process group of its own), found by a variable only this test's processes carry."""
    needle = marker.encode() + b"\0"
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit() or int(entry.name) == os.getpid():
            continue
        try:
            environ = (entry / "environ").read_bytes()
            cmdline = (entry / "cmdline").read_bytes()
        except OSError:
            continue
        # Only jobctl's own processes: servers a broader fixture shares between tests are left alone.
        args = cmdline.split(b"\0")
        if b"jobctl" not in args and not any(a.endswith(b"/jobctl") for a in args):
            continue
        if needle in environ or environ.endswith(marker.encode()):
            with contextlib.suppress(OSError):
                os.kill(int(entry.name), signal.SIGKILL)


def cli_env(extra: dict[str, str] | None = None) -> dict[str, str]:
    """The current environment plus `extra`, for subprocesses."""
    return {**os.environ, **(extra or {})}


@pytest.fixture
def run(env: dict[str, str]) -> Callable[..., subprocess.CompletedProcess[str]]:
    """Run `jobctl ARGS...` in a subprocess, as a user would."""

    def _run(
        *args: str, input: str | None = None, timeout: float = 60, **extra: str
    ) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [sys.executable, "-m", "jobctl", *args],
            input=input,
            capture_output=True,
            text=True,
            timeout=timeout,
            env=cli_env(extra),
        )

    return _run


class BackgroundProcess:
    """A long-running command (server, worker) with its output in a file, stopped by its PID."""

    def __init__(self, cmd: list[str], log: Path, env: dict[str, str] | None = None, cwd: Path | None = None):
        self.log_path = log
        self._log = open(log, "w")  # noqa: SIM115
        self.proc = subprocess.Popen(
            cmd,
            stdout=self._log,
            stderr=subprocess.STDOUT,
            env=env or cli_env(),
            cwd=cwd,
            start_new_session=True,
        )

    @property
    def pid(self) -> int:
        return self.proc.pid

    def output(self) -> str:
        return self.log_path.read_text()

    def wait_for_output(self, text: str, timeout: float = 30) -> str:
        """Wait until `text` appears in the output (fail early if the process exits)."""

        def seen() -> bool:
            if self.proc.poll() is not None and text not in self.output():
                pytest.fail(f"{self.proc.args!r} exited {self.proc.returncode}:\n{self.output()}")
            return text in self.output()

        wait_for(seen, timeout)
        return self.output()

    def stop(self, sig: int = signal.SIGTERM, timeout: float = 30) -> int:
        if self.proc.poll() is None:
            self.proc.send_signal(sig)
            try:
                self.proc.wait(timeout)
            except subprocess.TimeoutExpired:
                os.killpg(self.proc.pid, signal.SIGKILL)  # and whatever it started (work-horses)
                self.proc.wait(10)
        self._log.close()
        return self.proc.returncode


class WorkerProcess(BackgroundProcess):
    """A `jobctl worker` subprocess, stopped by its PID."""

    def __init__(self, args: list[str], log: Path) -> None:
        super().__init__([sys.executable, "-m", "jobctl", "worker", *args], log, cli_env())


@pytest.fixture
def start_worker(env: dict[str, str], tmp_path: Path) -> Iterator[Callable[..., WorkerProcess]]:
    """Start real `jobctl worker` processes; every one is stopped at the end of the test."""
    started: list[WorkerProcess] = []

    def _start(*args: str, wait: bool = True) -> WorkerProcess:
        worker = WorkerProcess(list(args), tmp_path / f"worker-{len(started)}.log")
        started.append(worker)
        if wait:
            wait_for(lambda: "Listening on" in worker.output() or worker.proc.poll() is not None, 30)
        return worker

    yield _start
    for worker in started:
        worker.stop(signal.SIGTERM, timeout=10)


@pytest.fixture
def private_redis(env: dict[str, str], monkeypatch: pytest.MonkeyPatch) -> Iterator[Any]:
    """A Redis server of this test's own, which it may crash and restart."""
    from tests.servers import RedisServer

    server = RedisServer().start()
    monkeypatch.setenv("REDIS_URL", server.url)
    reset_caches()
    yield server
    server.close()


def stop_cold(worker: WorkerProcess) -> None:
    """A cold shutdown: a second SIGTERM while the worker runs its job. RQ takes a second signal
    within a second of the first for a repeat of it, and two signals that arrive while the worker is
    inside a database call are delivered as one: the second is sent only once the worker has recorded
    the first (its shutdown date in Redis), and a second later."""
    from rq import Worker

    from jobctl.queue import get_redis

    def took_first() -> bool:
        found = [w for w in Worker.all(connection=get_redis()) if w.pid == worker.proc.pid]
        return bool(found) and found[0].shutdown_requested_date is not None

    worker.proc.send_signal(signal.SIGTERM)
    wait_for(took_first, 30)
    time.sleep(1.2)
    worker.proc.send_signal(signal.SIGTERM)
    worker.proc.wait(30)


def submit(cli: Callable[..., Any], *args: str) -> int:
    """`jobctl submit ARGS` through the `cli` fixture; the new job's id."""
    out = cli("submit", *args)
    assert out.exit_code == 0, out
    return int(out.stdout)


def show(cli: Callable[..., Any], job_id: int) -> dict[str, Any]:
    """The job's record as `jobctl show ID --json` prints it."""
    out = cli("show", str(job_id), "--json")
    assert out.exit_code == 0, out
    record: dict[str, Any] = json.loads(out.stdout)
    return record


def ended(cli: Callable[..., Any], job_id: int) -> Callable[[], dict[str, Any] | None]:
    """A `wait_for` predicate: the job's record once it is terminal."""

    def check() -> dict[str, Any] | None:
        found = show(cli, job_id)
        return found if found["status"] in ("completed", "failed", "cancelled") else None

    return check


@pytest.fixture
def ops_env(env: dict[str, str], monkeypatch: pytest.MonkeyPatch) -> dict[str, str]:
    """The usual environment with the operator-view test tasks registered too."""
    monkeypatch.setenv("JOBCTL_TASKS", "tests.sample_tasks,tests.ops_tasks")
    reset_caches()
    return dict(os.environ)


def wait_for(predicate: Callable[[], Any], timeout: float = 20, interval: float = 0.05) -> Any:
    """Poll until `predicate()` is truthy; fail the test after `timeout` seconds."""
    deadline = time.monotonic() + timeout
    while True:
        value = predicate()
        if value:
            return value
        if time.monotonic() > deadline:
            pytest.fail(f"timed out after {timeout}s waiting for {getattr(predicate, '__name__', predicate)}")
        time.sleep(interval)


class CliResult:
    """What a user sees from one command: exit code, stdout, stderr."""

    def __init__(self, exit_code: int, stdout: str, stderr: str) -> None:
        self.exit_code = exit_code
        self.returncode = exit_code
        self.stdout = stdout
        self.stderr = stderr

    def __repr__(self) -> str:
        return f"CliResult(exit_code={self.exit_code}, stdout={self.stdout!r}, stderr={self.stderr!r})"


@pytest.fixture
def cli(env: dict[str, str]) -> Callable[..., CliResult]:
    """Run `jobctl ARGS...` in this process (fast), with the same error handling as the real entry point."""
    from typer.testing import CliRunner

    from jobctl.cli import app

    runner = CliRunner()

    def _cli(*args: str, input: str | None = None) -> CliResult:
        result = runner.invoke(app, list(args), input=input, catch_exceptions=False)
        return CliResult(result.exit_code, result.stdout, result.stderr)

    return _cli


@pytest.fixture
def background(tmp_path: Path) -> Iterator[Callable[..., BackgroundProcess]]:
    """Start long-running commands; every one still running is stopped at the end of the test."""
    started: list[BackgroundProcess] = []

    def _start(
        cmd: list[str], env: dict[str, str] | None = None, cwd: Path | None = None
    ) -> BackgroundProcess:
        process = BackgroundProcess(cmd, tmp_path / f"background-{len(started)}.log", env, cwd)
        started.append(process)
        return process

    yield _start
    for process in started:
        process.stop()
