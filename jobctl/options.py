"""The job-control options of a submission (when, after what, how retried, time limits, priority, unique
key): checked and turned into row fields; and the insert that enforces unique keys and records waits."""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

import sqlalchemy as sa
from sqlalchemy import exc as sa_exc

from . import backoff, dependencies, store, timespec
from .config import get_settings
from .errors import RefusedError, UsageError
from .inserts import insert_values
from .models import ACTIVE, Job
from .priority import check_priority

if TYPE_CHECKING:
    from .service import JobRequest

MAX_KEY = 255
# The job-control fields a line of `submit --from` may carry ("in" is `--in`), and the JSON types each takes.
LINE_FIELDS: dict[str, tuple[type, ...]] = {
    "at": (str,),
    "in": (str, int, float),
    "after": (list, int),
    "after_any": (list, int),
    "retry_delay": (str, int, float),
    "retry_on": (list, str),
    "soft_timeout": (str, int),
    "priority": (str,),
    "at_front": (bool,),
    "unique_key": (str,),
}


def check(req: JobRequest) -> None:
    """Validate the request's job-control options and fill `req.control` with the row fields they set."""
    if req.control:
        return  # already checked (bulk submissions are checked line by line, then as a whole)
    settings = get_settings()
    req.timeout = timespec.parse_seconds(req.timeout, what="timeout")
    soft = timespec.parse_seconds(req.soft_timeout, what="soft timeout")
    hard = req.timeout or settings.job_timeout
    if soft is not None and soft >= hard:
        raise UsageError(f"the soft timeout ({soft} s) must be below the hard timeout ({hard} s)")
    if req.retry_delay is not None and not req.retries:
        raise UsageError("--retry-delay needs --retries N (how many extra attempts)")
    retry_on = backoff.parse_retry_on(req.retry_on)
    if retry_on and not req.retries:
        raise UsageError("--retry-on needs --retries N (how many extra attempts)")
    strict, loose = dependencies.check_ids(req.after or [], req.after_any or [])
    req.control = {
        "scheduled_for": timespec.due_time(req.at, req.delay),
        "priority": check_priority(req.priority),
        "at_front": bool(req.at_front),
        "depends_on": strict or None,
        "depends_on_any": loose or None,
        "blocked": bool(strict or loose),
        "retry_delay": backoff.parse_retry_delay(req.retry_delay),
        "retry_on": retry_on,
        "soft_timeout": soft,
        "unique_key": check_unique_key(req.unique_key),
    }


def check_unique_key(key: str | None) -> str | None:
    """A unique key as given, or a usage error for an empty, too long or NUL-containing one."""
    if key is None:
        return None
    if not isinstance(key, str) or not key.strip() or len(key) > MAX_KEY or "\x00" in key:
        raise UsageError(f"invalid unique key {key!r}: give 1 to {MAX_KEY} characters")
    return key


def _taken(job_id: int, key: str, status: str) -> RefusedError:
    return RefusedError(f"job {job_id} with unique key {key!r} is already {status}")


def _active_with(conn: Any, keys: Sequence[str]) -> Any:
    return conn.execute(
        sa.select(store.JOB.c.id, store.JOB.c.unique_key, store.JOB.c.status)
        .where(store.JOB.c.unique_key.in_(list(keys)), store.JOB.c.status.in_([s.value for s in ACTIVE]))
        .order_by(store.JOB.c.id)
    ).first()


@store.guarded
def insert_jobs(rows: Sequence[dict[str, Any]]) -> list[dict[str, Any]]:
    """Insert pending rows and their waits in one transaction; returns the stored values of each row
    (see inserts.insert_values). A unique key held by an active job (or given twice) is refused,
    naming the job that holds it."""
    from .queue import rq_job_id

    keys = [r["unique_key"] for r in rows if r.get("unique_key")]
    if len(set(keys)) != len(keys):
        twice = next(k for k in keys if keys.count(k) > 1)
        raise RefusedError(f"unique key {twice!r} is given to more than one job")
    try:
        with store.begin() as conn:
            if keys and (held := _active_with(conn, keys)) is not None:
                raise _taken(held.id, held.unique_key, held.status)
            values = insert_values(conn, rows, lambda job_id: rq_job_id(job_id, 1))
            dependencies.add_edges(conn, values)
    except sa_exc.IntegrityError:
        # Another submission took the key between the check and the insert (the index refused it).
        with store.get_engine().connect() as conn:
            held = _active_with(conn, keys) if keys else None
        if held is None:
            raise
        raise _taken(held.id, held.unique_key, held.status) from None
    return values


def from_line(data: dict[str, Any], defaults: JobRequest, number: int) -> dict[str, Any]:
    """The job-control keyword arguments of a `submit --from` line, falling back to the command's options."""
    for key, kinds in LINE_FIELDS.items():
        value = data.get(key)
        bad_bool = isinstance(value, bool) and bool not in kinds
        if value is not None and (bad_bool or not isinstance(value, kinds)):
            raise UsageError(f"line {number}: {key!r} has the wrong type ({type(value).__name__})")

    def ids(key: str, default: list[int]) -> list[int]:
        value = data.get(key, default)
        value = [value] if isinstance(value, int) else value
        if not all(isinstance(i, int) and not isinstance(i, bool) for i in value):
            raise UsageError(f"line {number}: {key!r} must be a job id or a list of job ids")
        return list(value)

    def text(key: str, default: Any) -> Any:
        value = data.get(key, default)
        return str(value) if isinstance(value, int | float) and not isinstance(value, bool) else value

    retry_on = data.get("retry_on", defaults.retry_on)
    return {
        "at": data.get("at", defaults.at),
        "delay": text("in", defaults.delay),
        "after": ids("after", defaults.after),
        "after_any": ids("after_any", defaults.after_any),
        "retry_delay": text("retry_delay", defaults.retry_delay),
        "retry_on": [retry_on] if isinstance(retry_on, str) else retry_on,
        "soft_timeout": data.get("soft_timeout", defaults.soft_timeout),
        "priority": data.get("priority", defaults.priority),
        "at_front": data.get("at_front", defaults.at_front),
        "unique_key": data.get("unique_key", defaults.unique_key),
    }


def reopen(job_id: int) -> tuple[bool, Job | None]:
    """`store.reopen` for `jobctl retry`, refusing when an active job holds the row's unique key."""
    from .queue import rq_job_id

    try:
        return store.reopen(job_id, rq_job_id)
    except sa_exc.IntegrityError:
        job = store.get_job(job_id)
        with store.get_engine().connect() as conn:
            held = _active_with(conn, [job.unique_key]) if job and job.unique_key else None
        if held is None:
            raise
        raise _taken(held.id, held.unique_key, held.status) from None
