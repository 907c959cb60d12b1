"""Use cases behind the commands: submit, list, show, cancel, retry, health. They never print."""

from __future__ import annotations

import contextlib
import json
import re
from collections.abc import Collection, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

# Only what `list`, `show` and `cancel` need is imported here: submitting imports options, shell and
# tasks (pydantic validators for every built-in task) in the functions that use them.
from . import listing, queue, store
from .config import get_settings
from .errors import BackendError, NotFoundError, RefusedError, UsageError
from .models import ACTIVE, Job, JobStatus

MAX_ID = 2**63 - 1
MAX_NAME = 10_000
# `list --offset`: deeper pages cost a walk over every skipped row; `--before ID` pages at any depth.
MAX_OFFSET = 10_000
_SPACE = re.compile(r"\s")
_STRICT_JSON = json.JSONEncoder(allow_nan=False)


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
    checked: bool = field(default=False, repr=False)  # by _check_request: bulk lines are not checked twice


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
    if req.checked:
        return req
    from . import options, shell
    from .tasks import require_task, validate_args

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
    if not req.queue or len(req.queue) > 255 or _SPACE.search(req.queue):
        raise UsageError(f"invalid queue name {req.queue!r}")
    if not isinstance(req.args, dict):
        raise UsageError("task arguments must be a JSON object")
    try:
        _STRICT_JSON.encode(req.args)
    except ValueError as exc:
        raise UsageError(f"task arguments are not valid JSON ({exc})") from None
    validate_args(require_task(req.task), req.args)
    if req.task == shell.SHELL_TASK:
        req.queue = shell.check_request(req.args, req.queue)  # only --allow-shell workers serve it
    req.checked = True
    return req


def validate_request(req: JobRequest) -> JobRequest:
    """Check one request as `submit` would (task, arguments, options) without storing anything."""
    from .tasks import load_task_modules

    load_task_modules(get_settings().task_modules)
    return _check_request(req)


def submit_jobs(requests: Sequence[JobRequest]) -> list[Job]:
    """Validate every request, store the rows in one transaction, then enqueue them pipelined."""
    rows, blocked = _submit(requests)
    jobs = [store.job_from_values(values) for values in rows]
    if blocked:  # resolving may have released or cancelled some of them
        now = store.get_jobs(blocked)
        jobs = [now.get(j.id or 0, j) for j in jobs]
    return jobs


def submit_ids(requests: Sequence[JobRequest]) -> list[int]:
    """`submit_jobs` returning only the new ids: no job objects are built (`submit --from`)."""
    rows, _blocked = _submit(requests)
    return [values["id"] for values in rows]


def _submit(requests: Sequence[JobRequest]) -> tuple[list[dict[str, Any]], list[int]]:
    """Check, store and enqueue; the stored values of the new rows and the ids of those blocked."""
    from . import options
    from .attempts import Attempt
    from .tasks import load_task_modules

    load_task_modules(get_settings().task_modules)
    checked = [_check_request(r) for r in requests]
    if not checked:
        return [], []
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
    stored = options.insert_jobs(rows)
    try:
        queue.enqueue([Attempt.first_of(values) for values in stored if not values["blocked"]])
    except BackendError as exc:
        ids = [values["id"] for values in stored]
        # If the database is down too, the reconciler enqueues pending rows that have no queue entry.
        with contextlib.suppress(BackendError):
            store.fail_unqueued(ids, f"could not be queued: {exc}")
        raise
    blocked = [values["id"] for values in stored if values["blocked"]]
    if blocked:  # dependencies that already ended release (or cancel) their new dependents now
        from .dependencies import resolve

        resolve(blocked)
    return stored, blocked


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


def with_live_state(jobs: Sequence[Job], only: Collection[JobStatus] = ACTIVE) -> list[JobView]:
    """Attach what Redis knows to the jobs in the `only` statuses, in one pipelined read (none if none)."""
    wanted = {s.value for s in only}
    active = [j for j in jobs if j.status in wanted]
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
    before: int | None = None,
) -> list[JobView]:
    """Jobs matching the filters, newest first (or by `sort`), with live progress for active ones;
    with `before`, only jobs with a lower id (the next page after one that ends at that id)."""
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
    if offset < 0:
        raise UsageError(f"--offset must be 0 or more, got {offset}")
    if offset > MAX_OFFSET:
        raise UsageError(
            f"--offset must be at most {MAX_OFFSET}, got {offset} (to page further, use --before ID "
            "with the last id shown)"
        )
    if before is not None and not 1 <= before <= MAX_ID:
        raise UsageError(f"--before must be a job id (1 or more), got {before}")
    jobs = listing.list_jobs(
        statuses=statuses, task=task, queue=queue_name, limit=limit, offset=offset, before=before, **filters
    )
    # A list shows live progress, and only a running job has any: a page of pending and ended jobs
    # needs no Redis at all (`show` reads a pending job's queue state too).
    return with_live_state(jobs, only=(JobStatus.PROCESSING,))


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
    from . import options

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


def merged_args(base: Mapping[str, Any], items: Iterable[str]) -> dict[str, Any]:
    """Arguments from `-a`, on top of `base`."""
    return {**base, **parse_assignments(items)}
