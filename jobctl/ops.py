"""Operator use cases: `list` filters and sorting, `wait` for jobs to end, `prune` old records."""

from __future__ import annotations

import time
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any

import sqlalchemy as sa

from . import listing, store
from .durations import parse_duration, parse_since
from .errors import BackendError, NotFoundError, UsageError
from .models import TERMINAL, Job, JobStatus

# ---------------------------------------------------------------- list filters


def glob_to_like(pattern: str) -> str:
    """A shell glob (`*` any text, `?` one character) as a LIKE pattern escaped with a backslash."""
    out = []
    for ch in pattern:
        if ch in "\\%_":
            out.append("\\" + ch)
        elif ch == "*":
            out.append("%")
        elif ch == "?":
            out.append("_")
        else:
            out.append(ch)
    return "".join(out)


def parse_sort(text: str) -> list[tuple[str, bool]]:
    """`--sort created` (ascending), `-duration` (descending), several separated by commas."""
    order = []
    for part in text.split(","):
        key = part.strip().lower()
        descending = key.startswith("-")
        key = key.lstrip("+-")
        if key not in listing.SORT_KEYS:
            raise UsageError(f"cannot sort by {part.strip()!r} (choose from {', '.join(listing.SORT_KEYS)})")
        order.append((key, descending))
    return order


def list_filters(*, since: str | None, name: str | None, sort: str | None) -> dict[str, Any]:
    """The keyword arguments `listing.list_jobs` takes for `list --since/--name/--sort`."""
    filters: dict[str, Any] = {}
    if since is not None:
        filters["since"] = parse_since(since)
    if name is not None:
        filters["name_like"] = glob_to_like(name)
    if sort is not None:
        filters["order"] = parse_sort(sort)
    return filters


# ---------------------------------------------------------------- wait


@dataclass
class WaitResult:
    """The jobs waited for, as they ended (or stood when the wait timed out)."""

    jobs: list[Job]
    timed_out: bool = False

    @property
    def all_completed(self) -> bool:
        return not self.timed_out and all(j.status == JobStatus.COMPLETED.value for j in self.jobs)

    @property
    def unfinished(self) -> list[Job]:
        return [j for j in self.jobs if not store.is_terminal(j.status)]


def unique_ids(ids: Iterable[int]) -> list[int]:
    """Ids in the order given, each once; an id no job can have is not found."""
    from .service import check_id

    return list(dict.fromkeys(check_id(i) for i in ids))


def wait_for_jobs(
    ids: Sequence[int],
    *,
    timeout: float | None = None,
    interval: float = 0.2,
    on_end: Callable[[Job], None] | None = None,
) -> WaitResult:
    """Block until every job is terminal (or `timeout` seconds pass); `on_end` sees each job as it ends."""
    wanted = unique_ids(ids)
    rows = store.get_jobs(wanted)
    missing = [i for i in wanted if i not in rows]
    if missing:
        raise NotFoundError(f"job {missing[0]} not found")
    deadline = None if timeout is None else time.monotonic() + timeout
    pending = set(wanted)
    while True:
        for job_id in sorted(pending):
            job = rows[job_id]
            if store.is_terminal(job.status):
                pending.discard(job_id)
                if on_end is not None:
                    on_end(job)
        if not pending:
            return WaitResult([rows[i] for i in wanted])
        if deadline is not None and time.monotonic() >= deadline:
            return WaitResult([rows[i] for i in wanted], timed_out=True)
        pause = interval if deadline is None else max(0.0, min(interval, deadline - time.monotonic()))
        time.sleep(pause)
        try:
            rows.update(store.get_jobs(sorted(pending)))
        except BackendError:
            if deadline is not None and time.monotonic() >= deadline:
                raise
            # A database that blips does not end the wait: try again next tick.


# ---------------------------------------------------------------- prune

PRUNE_BATCH = 500
TERMINAL_VALUES = tuple(s.value for s in JobStatus if s in TERMINAL)


@dataclass
class PrunePlan:
    """What `prune` would delete: terminal jobs that ended before `cutoff`."""

    cutoff: datetime
    statuses: list[str]
    counts: dict[str, int] = field(default_factory=dict)
    sample: list[Job] = field(default_factory=list)

    @property
    def total(self) -> int:
        return sum(self.counts.values())


@dataclass
class PruneResult:
    """What `prune` deleted."""

    deleted: int
    counts: dict[str, int]
    redis_note: str | None = None


def prune_statuses(statuses: Sequence[str]) -> list[str]:
    """Statuses given to `prune --status`: terminal ones only (default: all three)."""
    chosen = [s.lower() for s in statuses] or list(TERMINAL_VALUES)
    for status in chosen:
        if status not in TERMINAL_VALUES:
            raise UsageError(
                f"cannot prune {status!r} jobs: only terminal ones ({', '.join(TERMINAL_VALUES)}) are deleted"
            )
    return list(dict.fromkeys(chosen))


def _ended_before(cutoff: datetime, statuses: Sequence[str]) -> Any:
    job = store.JOB
    ended = sa.func.coalesce(job.c.completed_at, job.c.updated_at)
    return sa.and_(job.c.status.in_(list(statuses)), ended < cutoff)


@store.guarded
def plan_prune(older_than: str, statuses: Sequence[str] = (), sample: int = 20) -> PrunePlan:
    """Count (and show a few of) the terminal jobs that ended more than `older_than` ago."""
    seconds = parse_duration(older_than, what="--older-than")
    plan = PrunePlan(datetime.now(UTC) - timedelta(seconds=seconds), prune_statuses(statuses))
    where = _ended_before(plan.cutoff, plan.statuses)
    job = store.JOB
    with store.get_engine().connect() as conn:
        counted = conn.execute(sa.select(job.c.status, sa.func.count()).where(where).group_by(job.c.status))
        plan.counts = {status: int(n) for status, n in counted}
        rows = conn.execute(sa.select(job).where(where).order_by(job.c.id).limit(sample)).all()
    plan.sample = [Job.model_validate(dict(r._mapping)) for r in rows]
    return plan


@store.guarded
def prune(plan: PrunePlan, batch: int = PRUNE_BATCH) -> PruneResult:
    """Delete the planned jobs (as they stand now) with their logs, then what Redis still holds of them."""
    from . import queue

    job = store.JOB
    where = _ended_before(plan.cutoff, plan.statuses)
    counts: dict[str, int] = {}
    redis_note = None
    while True:
        with store.begin() as conn:
            query = sa.select(job.c.id).where(where).order_by(job.c.id).limit(batch)
            ids = conn.execute(query).scalars().all()
            if not ids:
                break
            # The same conditions again: a row retried since it was read is not deleted.
            deleted = conn.execute(
                sa.delete(job)
                .where(job.c.id.in_(ids), where)
                .returning(job.c.id, job.c.status, job.c.attempts, job.c.queue, job.c.task_id)
            ).all()
            _delete_dependents(conn, [r.id for r in deleted])
        for row in deleted:
            counts[row.status] = counts.get(row.status, 0) + 1
        if redis_note is None:
            try:
                queue.purge(_redis_leftovers(deleted), extra_keys=_jobctl_keys(deleted))
            except BackendError as exc:
                redis_note = f"Redis not reached ({exc}); what it holds of these jobs expires on its own"
    return PruneResult(sum(counts.values()), counts, redis_note)


def _attempt_ids(row: Any) -> set[str]:
    from .queue import rq_job_id

    ids = {rq_job_id(row.id, attempt) for attempt in range(1, (row.attempts or 0) + 1)}
    if row.task_id:
        ids.add(row.task_id)
    return ids


def _redis_leftovers(rows: Sequence[Any]) -> dict[str, list[str]]:
    by_queue: dict[str, list[str]] = {}
    for row in rows:
        by_queue.setdefault(row.queue, []).extend(sorted(_attempt_ids(row)))
    return by_queue


def _jobctl_keys(rows: Sequence[Any]) -> list[str]:
    from .logs import stream_key
    from .queue import CANCEL_KEY

    keys = []
    for row in rows:
        for rq_id in sorted(_attempt_ids(row)):
            keys += [stream_key(rq_id), CANCEL_KEY.format(rq_id)]
    return keys


def _delete_dependents(conn: Any, ids: Sequence[int]) -> None:
    """Rows of other tables that belong to deleted jobs (SQLite does not cascade foreign keys)."""
    if not ids:
        return
    from .models import JobLog

    table = JobLog.__table__  # type: ignore[attr-defined]
    conn.execute(sa.delete(table).where(table.c.job_id.in_(list(ids))))
