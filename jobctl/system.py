"""What `jobctl health`, `jobctl tasks` and `jobctl config` report about this installation."""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Any

from . import queue, store
from .config import get_settings, mask_url
from .errors import RefusedError
from .models import JobStatus
from .service import JobRequest, cancel_job, submit_jobs


@dataclass
class Check:
    """One line of `jobctl health`."""

    name: str
    ok: bool
    detail: str
    seconds: float


def _timed(name: str, fn: Any) -> Check:
    started = time.monotonic()
    try:
        detail = fn()
        return Check(name, True, detail, time.monotonic() - started)
    except Exception as exc:
        return Check(name, False, str(exc), time.monotonic() - started)


def health(timeout: float = 10.0) -> list[Check]:
    """Check the database and Redis, reconcile them, and make a round trip through a worker."""
    settings = get_settings()

    def database() -> str:
        store.ping()
        return mask_url(settings.resolved_database_url())

    def redis() -> str:
        queue.ping()
        return mask_url(queue.redis_url())

    def worker() -> str:
        workers = queue.list_workers()
        if not workers:
            raise RefusedError("no worker is running: start one with `jobctl worker`")
        (job,) = submit_jobs([JobRequest(name="health check", task="health_check")])
        assert job.id is not None
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            row = store.get_job(job.id)
            if row is not None and store.is_terminal(row.status):
                if row.status == JobStatus.COMPLETED.value:
                    return f"job {job.id} completed by {row.worker}"
                raise RefusedError(f"job {job.id} {row.status}: {(row.error or '').splitlines()[0:1]}")
            time.sleep(0.05)
        cancel_job(job.id)
        raise RefusedError(f"no worker finished job {job.id} within {timeout:g}s")

    def reconcile() -> str:
        from .reconcile import run_pass

        return run_pass().summary()

    checks = [_timed("database", database), _timed("redis", redis)]
    if all(c.ok for c in checks):
        checks.append(_timed("reconcile", reconcile))
        checks.append(_timed("worker", worker))
    else:
        checks.append(Check("reconcile", False, "skipped: a backend is down", 0.0))
        checks.append(Check("worker", False, "skipped: a backend is down", 0.0))
    return checks


def task_list() -> list[Any]:
    """The registered tasks, loading JOBCTL_TASKS first."""
    from .tasks import all_tasks, load_task_modules

    load_task_modules(get_settings().task_modules)
    return list(all_tasks().values())


def effective_config() -> list[tuple[str, str]]:
    """Every setting with its effective value, secrets masked, and each backend's mode."""
    s = get_settings()
    url = s.resolved_database_url()
    if s.database_is_embedded:
        database_mode = "embedded (SQLite in the data directory)"
    else:
        database_mode = "SQLite file" if url.startswith("sqlite") else "server"
    rows = [
        ("database", mask_url(url)),
        ("database mode", database_mode),
        *_redis_config(),
        ("data dir", str(s.data_dir.expanduser().resolve())),
        ("JOBCTL_TASKS", s.tasks or "(none)"),
        ("JOBCTL_DEFAULT_QUEUE", s.default_queue),
        ("JOBCTL_JOB_TIMEOUT", f"{s.job_timeout} s"),
        ("JOBCTL_SOFT_TIMEOUT", f"{s.soft_timeout} s" if s.soft_timeout else "off"),
        ("JOBCTL_RESULT_TTL", f"{s.result_ttl} s"),
        ("JOBCTL_WORKER_MAX_JOBS", str(s.worker_max_jobs)),
        ("JOBCTL_LOG_MAX_BYTES", f"{s.log_max_bytes} bytes per attempt" if s.log_max_bytes else "off"),
        ("JOBCTL_CANCEL_GRACE", f"{s.cancel_grace:g} s"),
        ("JOBCTL_PROGRESS_INTERVAL", f"{s.progress_interval:g} s"),
        ("JOBCTL_RECONCILE_INTERVAL", f"{s.reconcile_interval:g} s"),
        ("JOBCTL_LOST_AFTER", f"{s.lost_after:g} s"),
        ("JOBCTL_DASHBOARD_USERNAME", s.dashboard_username or "(none: the dashboard serves loopback only)"),
    ]
    if s.dashboard_password:
        rows.append(("JOBCTL_DASHBOARD_PASSWORD", "***"))
    if s.postgres_password:
        rows.append(("POSTGRES_PASSWORD", "***"))
    if s.redis_password:
        rows.append(("REDIS_PASSWORD", "***"))
    return rows


def _redis_config() -> list[tuple[str, str]]:
    """Where Redis is, and for the embedded server whether it runs and which binary it uses."""
    s = get_settings()
    url = s.resolved_redis_url()
    if url is not None:
        return [("redis", mask_url(url)), ("redis mode", "server")]
    from .embedded import INSTALL_HINT, layout, status

    found = status(s.data_dir)
    state = f"running (pid {found.pid})" if found.pid else "not running (starts on first use)"
    return [
        ("redis", layout(s.data_dir).url),
        ("redis mode", f"embedded redis-server on a unix socket, {state}"),
        ("redis data", str(found.work)),
        ("redis binary", found.binary or f"none found: {INSTALL_HINT}"),
    ]
