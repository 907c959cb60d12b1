"""Use cases behind the commands: submit, list, show, cancel, retry, health. They never print."""

from __future__ import annotations

import contextlib
import json
import time
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from . import options, queue, shell, store
from .config import get_settings, mask_url
from .errors import BackendError, NotFoundError, RefusedError, UsageError
from .models import Job, JobStatus
from .tasks import all_tasks, load_task_modules, require_task, validate_args

MAX_ID = 2**63 - 1
MAX_NAME = 10_000


@dataclass
class JobRequest:
    """What a user asked to run, before it is stored."""

    name: str
    task: str = "process"
    args: dict[str, Any] = field(default_factory=dict)
    description: str = ""
    queue: str | None = None
    timeout: int | str | None = None
    retries: int = 0
    # Job control (see options.py): when, after what, how retried, limits, priority, unique key.
    at: str | None = None
    delay: str | None = None
    after: list[int] = field(default_factory=list)
    after_any: list[int] = field(default_factory=list)
    retry_delay: str | None = None
    retry_on: list[str] | None = None
    soft_timeout: int | str | None = None
    priority: str | None = None
    at_front: bool = False
    unique_key: str | None = None
    control: dict[str, Any] = field(default_factory=dict)


def parse_assignment(text: str) -> tuple[str, Any]:
    """`KEY=VALUE` from `-a`: the value is JSON when it parses, else the string as typed."""
    key, sep, raw = text.partition("=")
    key = key.strip()
    if not sep or not key:
        raise UsageError(f"argument {text!r} is not KEY=VALUE")
    if not key.isidentifier():
        raise UsageError(f"argument name {key!r} is not a valid parameter name")
    try:
        value = json.loads(raw)
    except ValueError:
        value = raw
    return key, value


def parse_assignments(items: Iterable[str]) -> dict[str, Any]:
    """Every `-a KEY=VALUE`, later keys winning."""
    return dict(parse_assignment(item) for item in items)


def _check_request(req: JobRequest) -> JobRequest:
    settings = get_settings()
    if not isinstance(req.name, str) or not req.name.strip():
        raise UsageError("the job name must not be empty")
    if len(req.name) > MAX_NAME:
        raise UsageError(f"the job name is {len(req.name)} characters long; the limit is {MAX_NAME}")
    if "\x00" in req.name or "\x00" in req.description:
        raise UsageError("the job name and description must not contain NUL characters")
    options.check(req)
    if req.timeout is not None and not 1 <= int(req.timeout) <= 7 * 86_400:
        raise UsageError(f"timeout must be between 1 second and 7 days, got {req.timeout}")
    if not 0 <= req.retries <= 100:
        raise UsageError(f"retries must be between 0 and 100, got {req.retries}")
    req.queue = req.queue or settings.default_queue
    if not req.queue or len(req.queue) > 255 or any(c.isspace() for c in req.queue):
        raise UsageError(f"invalid queue name {req.queue!r}")
    if not isinstance(req.args, dict):
        raise UsageError("task arguments must be a JSON object")
    try:
        json.dumps(req.args, allow_nan=False)
    except ValueError as exc:
        raise UsageError(f"task arguments are not valid JSON ({exc})") from None
    validate_args(require_task(req.task), req.args)
    if req.task == shell.SHELL_TASK:
        req.queue = shell.check_request(req.args, req.queue)  # only --allow-shell workers serve it
    return req


def validate_request(req: JobRequest) -> JobRequest:
    """Check one request as `submit` would (task, arguments, options) without storing anything."""
    load_task_modules(get_settings().task_modules)
    return _check_request(req)


def submit_jobs(requests: Sequence[JobRequest]) -> list[Job]:
    """Validate every request, store the rows in one transaction, then enqueue them pipelined."""
    load_task_modules(get_settings().task_modules)
    checked = [_check_request(r) for r in requests]
    if not checked:
        return []
    rows = [
        {
            "name": r.name,
            "description": r.description,
            "task": r.task,
            "args": r.args,
            "queue": r.queue,
            "timeout": r.timeout,
            "retries": r.retries,
            **r.control,
        }
        for r in checked
    ]
    jobs = options.insert_jobs(rows)
    try:
        queue.enqueue([j for j in jobs if not j.blocked])
    except BackendError as exc:
        ids = [j.id for j in jobs if j.id is not None]
        # If the database is down too, the reconciler enqueues pending rows that have no queue entry.
        with contextlib.suppress(BackendError):
            store.fail_unqueued(ids, f"could not be queued: {exc}")
        raise
    blocked = [j.id for j in jobs if j.blocked and j.id is not None]
    if blocked:  # dependencies that already ended release (or cancel) their new dependents now
        from .dependencies import resolve

        resolve(blocked)
        now = store.get_jobs(blocked)
        jobs = [now.get(j.id or 0, j) for j in jobs]
    return jobs


def parse_job_lines(lines: Iterable[str], defaults: JobRequest) -> list[JobRequest]:
    """JSON Lines for `submit --from`: each line a job, any field of `defaults` overridable."""
    requests: list[JobRequest] = []
    allowed = {"name", "task", "args", "description", "queue", "timeout", "retries", *options.LINE_FIELDS}
    for number, line in enumerate(lines, 1):
        if not line.strip():
            continue
        try:
            data = json.loads(line)
        except ValueError as exc:
            raise UsageError(f"line {number}: not valid JSON ({exc})") from None
        if not isinstance(data, dict):
            raise UsageError(f"line {number}: expected a JSON object")
        unknown = set(data) - allowed
        if unknown:
            raise UsageError(f"line {number}: unknown field {sorted(unknown)[0]!r}")
        if "name" not in data:
            raise UsageError(f'line {number}: missing "name"')
        for key, kind in (("name", str), ("task", str), ("description", str), ("queue", str)):
            if key in data and not isinstance(data[key], kind):
                raise UsageError(f"line {number}: {key!r} must be a string")
        for key in ("retries",):
            if key in data and (isinstance(data[key], bool) or not isinstance(data[key], int | None)):
                raise UsageError(f"line {number}: {key!r} must be an integer")
        if "args" in data and not isinstance(data["args"], dict):
            raise UsageError(f'line {number}: "args" must be a JSON object')
        req = JobRequest(
            name=data["name"],
            task=data.get("task", defaults.task),
            args=data.get("args", dict(defaults.args)),
            description=data.get("description", defaults.description),
            queue=data.get("queue", defaults.queue),
            timeout=data.get("timeout", defaults.timeout),
            retries=data.get("retries", defaults.retries),
            **options.from_line(data, defaults, number),
        )
        try:
            load_task_modules(get_settings().task_modules)
            _check_request(req)
        except UsageError as exc:
            raise UsageError(f"line {number}: {exc}") from None
        requests.append(req)
    if not requests:
        raise UsageError("no jobs to submit: the input is empty")
    return requests


def check_id(job_id: int) -> int:
    """A job id as a user typed it: a positive integer the database can hold."""
    if not 1 <= job_id <= MAX_ID:
        raise NotFoundError(f"job {job_id} not found")
    return job_id


def get_job(job_id: int) -> Job:
    """One job, or NotFoundError."""
    job = store.get_job(check_id(job_id))
    if job is None:
        raise NotFoundError(f"job {job_id} not found")
    return job


@dataclass
class JobView:
    """A job with what Redis knows of it while it is active."""

    job: Job
    live: queue.LiveState | None = None
    waiting_for: list[int] | None = None  # set by show_job for a job blocked on others

    @property
    def progress(self) -> dict[str, Any] | None:
        if self.live is not None and self.live.progress:
            return self.live.progress
        return self.job.progress

    def to_public(self) -> dict[str, Any]:
        out = self.job.to_public()
        out["progress"] = self.progress
        if self.waiting_for is not None:
            out["waiting_for"] = self.waiting_for
        return out


def with_live_state(jobs: Sequence[Job]) -> list[JobView]:
    """Attach live progress to active jobs with one pipelined Redis read (none when nothing is active)."""
    active = [j for j in jobs if not store.is_terminal(j.status)]
    live: dict[int, queue.LiveState] = {}
    if active:
        try:
            live = queue.live_state(active)
        except BackendError:
            live = {}
    return [JobView(j, live.get(j.id or 0)) for j in jobs]


def list_jobs(
    *,
    statuses: Sequence[str] = (),
    task: str | None = None,
    queue_name: str | None = None,
    limit: int = 100,
    offset: int = 0,
    since: str | None = None,
    name: str | None = None,
    sort: str | None = None,
) -> list[JobView]:
    """Jobs matching the filters, newest first (or by `sort`), with live progress for active ones."""
    from .ops import list_filters

    filters = list_filters(since=since, name=name, sort=sort)
    valid = {s.value for s in JobStatus}
    for status in statuses:
        if status not in valid:
            raise UsageError(
                f"unknown status {status!r} (choose from {', '.join(s.value for s in JobStatus)})"
            )
    if not 1 <= limit <= 1000:
        raise UsageError(f"--limit must be between 1 and 1000, got {limit}")
    if not 0 <= offset <= MAX_ID:
        raise UsageError(f"--offset must be 0 or more, got {offset}")
    jobs = store.list_jobs(
        statuses=statuses, task=task, queue=queue_name, limit=limit, offset=offset, **filters
    )
    return with_live_state(jobs)


def show_job(job_id: int) -> JobView:
    """One job with its live state (and, while it is blocked, the jobs it still waits for)."""
    view = with_live_state([get_job(job_id)])[0]
    if view.job.blocked and view.job.status == JobStatus.PENDING.value:
        from .dependencies import still_waiting

        view.waiting_for = still_waiting(view.job)
    return view


@dataclass
class Outcome:
    """What happened to one id of a multi-id command."""

    job_id: int
    ok: bool
    message: str
    exit_code: int = 0


def cancel_job(job_id: int) -> Outcome:
    """Cancel one job: the row first, then its queue entry or its running process."""
    try:
        check_id(job_id)
    except NotFoundError as exc:
        return Outcome(job_id, False, str(exc), NotFoundError.exit_code)
    before, job = store.cancel(job_id)
    if job is None or before is None:
        return Outcome(job_id, False, f"job {job_id} not found", NotFoundError.exit_code)
    if job.status != JobStatus.CANCELLED.value or before.is_terminal:
        return Outcome(
            job_id, False, f"cannot cancel job {job_id}: it is {job.status}", RefusedError.exit_code
        )
    from .dependencies import after_end

    with contextlib.suppress(BackendError):  # the workers' sweep resolves what waited for it
        after_end([job_id])
    note = ""
    if job.task_id:
        try:
            if before is JobStatus.PENDING:
                queue.discard(job.task_id)
            else:
                queue.request_stop(job.task_id)
        except BackendError as exc:
            note = f" (Redis not reached: {exc}; the job will not start)"
    return Outcome(job_id, True, f"cancelled job {job_id} (was {before.value}){note}")


def retry_job(job_id: int) -> Outcome:
    """Put a failed or cancelled job back on its queue for another attempt."""
    try:
        check_id(job_id)
    except NotFoundError as exc:
        return Outcome(job_id, False, str(exc), NotFoundError.exit_code)
    try:
        reopened, job = options.reopen(job_id)
    except RefusedError as exc:
        return Outcome(job_id, False, f"cannot retry job {job_id}: {exc}", RefusedError.exit_code)
    if job is None:
        return Outcome(job_id, False, f"job {job_id} not found", NotFoundError.exit_code)
    if not reopened:
        return Outcome(
            job_id, False, f"cannot retry job {job_id}: it is {job.status}", RefusedError.exit_code
        )
    try:
        queue.enqueue([job])
    except BackendError as exc:
        store.fail_unqueued([job_id], f"could not be queued: {exc}")
        return Outcome(job_id, False, str(exc), BackendError.exit_code)
    return Outcome(job_id, True, f"retrying job {job_id} (attempt {job.attempts + 1})")


def worst_exit(outcomes: Sequence[Outcome]) -> int:
    """The exit code for several outcomes: the worst one."""
    order = {0: 0, 1: 1, 3: 2, 2: 3, 4: 4}
    return max((o.exit_code for o in outcomes), key=lambda c: order.get(c, 5), default=0)


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
    load_task_modules(get_settings().task_modules)
    return list(all_tasks().values())


def effective_config() -> list[tuple[str, str]]:
    """Every setting with its effective value, secrets masked, and each backend's mode."""
    s = get_settings()
    rows = [
        ("database", mask_url(s.resolved_database_url())),
        ("database mode", "embedded (SQLite in the data directory)" if s.database_is_embedded else "server"),
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
    ]
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


def merged_args(base: Mapping[str, Any], items: Iterable[str]) -> dict[str, Any]:
    """Arguments from `-a`, on top of `base`."""
    return {**base, **parse_assignments(items)}
