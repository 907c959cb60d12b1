"""Shared set-up for the benchmarks: private Redis database, SQLite or PostgreSQL store, workers."""

from __future__ import annotations

import argparse
import contextlib
import os
import signal
import statistics
import subprocess
import sys
import tempfile
import time
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
REDIS_SERVER = os.environ.get("BENCH_REDIS_URL", "redis://127.0.0.1:6379")
POSTGRES_ADMIN = os.environ.get("BENCH_POSTGRES_URL", "postgresql://postgres@127.0.0.1:5432/postgres")
LOCK_KEY = "jobctl:test-lock"


@contextlib.contextmanager
def redis_db() -> Iterator[str]:
    """Claim a free Redis database (1-15) for the run; flushed and released afterwards."""
    import redis

    token = f"bench-{os.getpid()}-{uuid.uuid4().hex}"
    for db in range(13, 0, -1):  # 14 and 15 are left for manual experiments
        conn = redis.Redis.from_url(f"{REDIS_SERVER}/{db}")
        if conn.set(LOCK_KEY, token, nx=True, ex=3 * 3600):
            try:
                yield f"{REDIS_SERVER}/{db}"
            finally:
                conn.flushdb()
            return
    raise SystemExit("no free Redis database")


@contextlib.contextmanager
def database(kind: str, data_dir: Path) -> Iterator[str]:
    """A fresh SQLite file or PostgreSQL database, schema applied."""
    if kind == "sqlite":
        yield f"sqlite:///{data_dir / 'jobctl.db'}"
        return
    import psycopg2

    name = f"jobctl_bench_{uuid.uuid4().hex[:8]}"
    admin = psycopg2.connect(POSTGRES_ADMIN)
    admin.autocommit = True
    admin.cursor().execute(f'CREATE DATABASE "{name}"')
    try:
        yield POSTGRES_ADMIN.rsplit("/", 1)[0] + "/" + name
    finally:
        admin.cursor().execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
        admin.close()


@contextlib.contextmanager
def environment(kind: str) -> Iterator[dict[str, str]]:
    """Environment variables for jobctl on a private Redis db and a fresh store; applied to this process."""
    with tempfile.TemporaryDirectory(prefix="jobctl-bench-") as tmp, redis_db() as redis_url:
        data_dir = Path(tmp)
        with database(kind, data_dir) as db_url:
            env = {
                "REDIS_URL": redis_url,
                "DATABASE_URL": db_url,
                "JOBCTL_DATA_DIR": str(data_dir),
                "JOBCTL_TASKS": "bench.tasks",
                "PYTHONPATH": str(ROOT),
            }
            saved = {k: os.environ.get(k) for k in env}
            os.environ.update(env)
            reset()
            if kind != "sqlite":
                from jobctl import schema

                schema.upgrade_schema()
            try:
                yield {**os.environ}
            finally:
                reset()
                for key, value in saved.items():
                    if value is None:
                        os.environ.pop(key, None)
                    else:
                        os.environ[key] = value


def reset() -> None:
    """Drop cached settings, engines and connections."""
    from jobctl import queue, store
    from jobctl.config import get_settings

    get_settings.cache_clear()
    store.reset_engines()
    queue.reset_connections()


def start(cmd: list[str], env: dict[str, str]) -> subprocess.Popen[bytes]:
    """Start a process in its own session, output discarded."""
    return subprocess.Popen(
        cmd, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True
    )


def stop(proc: subprocess.Popen[bytes]) -> None:
    """Stop a process this benchmark started, by its PID: SIGTERM, then, if it is still running 2 s
    later, a second SIGTERM (a worker lets its running jobs finish after the first; the second stops
    them and their work-horses, which run in sessions of their own), then SIGKILL."""
    if proc.poll() is None:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(2)
            return
        except subprocess.TimeoutExpired:
            proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(20)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait(5)


def jobctl(*args: str) -> list[str]:
    """The command line of `jobctl ARGS...` in this interpreter."""
    return [sys.executable, "-m", "jobctl", *args]


def queue_noops(plain_q: Any, jobs: int) -> list[Any]:
    """`jobs` no-op jobs on each side: jobctl's on queue `bench` (through `submit_jobs`), plain RQ's
    on `plain_q`. Returns the jobctl jobs."""
    from rq import Queue

    from jobctl import service

    created = service.submit_jobs(
        [service.JobRequest(name=f"n{i}", task="bench.noop", queue="bench") for i in range(jobs)]
    )
    plain_q.enqueue_many([Queue.prepare_data("bench.plain.noop") for _ in range(jobs)])
    return created


def rq(*args: str) -> list[str]:
    """The command line of `rq ARGS...`: the script installed beside this interpreter, if any."""
    script = Path(sys.executable).with_name("rq")
    return [str(script) if script.exists() else "rq", *args]


def wait_until(predicate: Callable[..., object], timeout: float = 60, interval: float = 0.002) -> None:
    """Poll until `predicate()` is true."""
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            raise TimeoutError("benchmark condition not reached")
        time.sleep(interval)


def bench_parser(doc: str | None) -> argparse.ArgumentParser:
    """A benchmark's command line: its docstring as help, and the `--backend sqlite|postgres|both`
    option every benchmark takes (see `backends`)."""
    parser = argparse.ArgumentParser(description=doc, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--backend", choices=["sqlite", "postgres", "both"], default="both")
    return parser


def run_each_backend(doc: str | None, measure: Callable[..., None], **counts: int) -> None:
    """A benchmark's `main`: parse --backend and an integer option per `counts` (name=default), then
    call `measure(kind, *counts)` for each store chosen."""
    parser = bench_parser(doc)
    for name, default in counts.items():
        parser.add_argument(f"--{name}", type=int, default=default)
    args = parser.parse_args()
    for kind in backends(args.backend):
        measure(kind, *(getattr(args, name) for name in counts))


def backends(choice: str) -> tuple[str, ...]:
    """The stores a `--backend` choice stands for."""
    return ("sqlite", "postgres") if choice == "both" else (choice,)


def median(values: list[float]) -> float:
    """The median."""
    return statistics.median(values)


def p95(values: list[float]) -> float:
    """The 95th percentile."""
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(0.95 * (len(ordered) - 1)))]
