"""Dependencies between jobs, kept in SQL: a job submitted `--after` others stays `pending` and `blocked`
(with no queue entry) until they end; then it is released onto its queue, or cancelled with a reason
when a job it needed completed failed or was cancelled.

Why SQL and not RQ's `depends_on`: each jobctl attempt has its own RQ id, so an RQ dependency would
point at one attempt of a job that may be retried; and RQ leaves a dependent deferred forever when
its dependency fails. Here, the row says what it waits for (`depends_on`, `depends_on_any`), and the
`job_dependency` table holds only the waits not yet resolved, indexed by the job waited for, so a job
that ends finds its dependents with one indexed query. Resolving is a compare-and-set on the waiting
row (`status='pending' AND blocked`), so the job that ended, `jobctl cancel`, and every worker's
periodic sweep may all try at once and exactly one acts.
"""

from __future__ import annotations

import functools
import logging
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import sqlalchemy as sa
from sqlalchemy.engine import Connection

from . import store
from .errors import NotFoundError
from .models import TERMINAL, Job, JobDependency, JobStatus, utcnow

log = logging.getLogger("jobctl.dependencies")

EDGE = JobDependency.__table__  # type: ignore[attr-defined]
JOB = store.JOB
_TERMINAL = [s.value for s in TERMINAL]


@dataclass
class Resolution:
    """What one resolution changed: jobs released onto their queues and jobs cancelled."""

    released: list[int] = field(default_factory=list)
    cancelled: list[int] = field(default_factory=list)


def check_ids(after: Iterable[int], after_any: Iterable[int]) -> tuple[list[int], list[int]]:
    """The ids of `--after` and `--after-any`, deduplicated; NotFoundError for one that does not exist."""
    strict = list(dict.fromkeys(int(i) for i in after))
    loose = [i for i in dict.fromkeys(int(i) for i in after_any) if i not in strict]
    wanted = strict + loose
    if not wanted:
        return [], []
    for job_id in wanted:
        if not 1 <= job_id <= 2**63 - 1:
            raise NotFoundError(f"job {job_id} not found (given to --after)")
    found = store.get_jobs(wanted)
    for job_id in wanted:
        if job_id not in found:
            raise NotFoundError(f"job {job_id} not found (given to --after)")
    return strict, loose


def add_edges(conn: Connection, rows: Sequence[Mapping[str, Any]]) -> None:
    """Record the waits of newly inserted blocked rows, from their stored values (in the inserting
    transaction)."""
    edges = [
        {"job_id": row["id"], "depends_on_id": dep, "any_outcome": loose}
        for row in rows
        if row.get("blocked")
        for loose, deps in ((False, row.get("depends_on") or []), (True, row.get("depends_on_any") or []))
        for dep in deps
    ]
    if edges:
        conn.execute(sa.insert(EDGE), edges)


def waiting_for(job: Job, statuses: dict[int, str]) -> list[int]:
    """The ids a blocked job still waits for, given the statuses of its dependencies."""
    deps = [*(job.depends_on or []), *(job.depends_on_any or [])]
    return [d for d in deps if statuses.get(d) not in _TERMINAL]


@store.guarded
def still_waiting(job: Job) -> list[int]:
    """The ids a blocked job waits for that have not ended yet."""
    return waiting_for(job, _statuses([*(job.depends_on or []), *(job.depends_on_any or [])]))


def _verdict(job: Job, statuses: dict[int, str]) -> tuple[str, str]:
    """("release" | "cancel" | "wait", reason) for a blocked job."""
    for dep in job.depends_on or []:
        status = statuses.get(dep)
        if status is None:
            return "cancel", f"dependency {dep} no longer exists"
        if status in (JobStatus.FAILED.value, JobStatus.CANCELLED.value):
            return "cancel", f"dependency {dep} {status}"
    if waiting_for(job, statuses):
        return "wait", ""
    return "release", ""


@store.guarded
def resolve(job_ids: Iterable[int]) -> Resolution:
    """Release or cancel blocked jobs whose dependencies have ended, cascading to their own dependents."""
    outcome = Resolution()
    todo = list(dict.fromkeys(job_ids))
    seen: set[int] = set()
    to_enqueue: list[Job] = []
    while todo:
        batch = [i for i in todo if i not in seen]
        todo = []
        seen.update(batch)
        ended = _resolve_batch(batch, outcome, to_enqueue)
        if ended:
            todo.extend(_dependents(ended))
    if to_enqueue:
        from . import queue

        try:
            queue.enqueue(to_enqueue)
        except Exception as exc:  # pending, unblocked, not queued: reconciliation enqueues them
            log.warning("could not queue released jobs %s: %s", [j.id for j in to_enqueue], exc)
    return outcome


def _resolve_batch(job_ids: list[int], outcome: Resolution, to_enqueue: list[Job]) -> list[int]:
    """Resolve these blocked rows; returns the ids that were cancelled (their dependents come next)."""
    if not job_ids:
        return []
    cancelled: list[int] = []
    jobs = store.get_jobs(job_ids)
    waiting = [j for j in jobs.values() if j.status == JobStatus.PENDING.value and j.blocked]
    # Rows no longer waiting that still carry a wait (cancelled by hand while blocked, or an edge
    # left over): their waits are forgotten.
    stale = [i for i, j in jobs.items() if j.blocked and j.status != JobStatus.PENDING.value]
    stale += [i for i in job_ids if i not in jobs]
    if not waiting and not stale:
        return []
    deps = {d for j in waiting for d in (*(j.depends_on or []), *(j.depends_on_any or []))}
    statuses = _statuses(deps)
    now = utcnow()
    with store.begin() as conn:
        if stale:  # rows that are no longer waiting (cancelled by hand, or resolved): forget their waits
            conn.execute(sa.delete(EDGE).where(EDGE.c.job_id.in_(stale)))
            conn.execute(
                sa.update(JOB)
                .where(JOB.c.id.in_(stale), JOB.c.status != JobStatus.PENDING.value, JOB.c.blocked)
                .values(blocked=False)
            )
        for job in waiting:
            assert job.id is not None
            verdict, reason = _verdict(job, statuses)
            if verdict == "wait":
                continue
            cas = sa.update(JOB).where(
                JOB.c.id == job.id, JOB.c.status == JobStatus.PENDING.value, JOB.c.blocked
            )
            if verdict == "release":
                done = conn.execute(cas.values(blocked=False, updated_at=now)).rowcount == 1
                if done:
                    job.blocked = False
                    to_enqueue.append(job)
                    outcome.released.append(job.id)
            else:
                done = (
                    conn.execute(
                        cas.values(
                            status=JobStatus.CANCELLED.value,
                            blocked=False,
                            error=f"cancelled: {reason}",
                            completed_at=now,
                            updated_at=now,
                        )
                    ).rowcount
                    == 1
                )
                if done:
                    cancelled.append(job.id)
                    outcome.cancelled.append(job.id)
                    log.info("job %s cancelled: %s", job.id, reason)
            if done:
                conn.execute(sa.delete(EDGE).where(EDGE.c.job_id == job.id))
    return cancelled


def _statuses(ids: Iterable[int]) -> dict[int, str]:
    ids = list(ids)
    if not ids:
        return {}
    with store.get_engine().connect() as conn:
        rows = conn.execute(sa.select(JOB.c.id, JOB.c.status).where(JOB.c.id.in_(ids))).all()
    return {r.id: r.status for r in rows}


@functools.cache
def _dependents_statement() -> Any:
    """Built once: for jobs whose end is not recorded with a worker's next claim."""
    ended: sa.BindParameter[list[int]] = sa.bindparam("ended", expanding=True)
    return sa.select(EDGE.c.job_id).where(EDGE.c.depends_on_id.in_(ended)).distinct()


def _dependents(ended: Iterable[int]) -> list[int]:
    ended = list(ended)
    if not ended:
        return []
    with store.get_engine().connect() as conn:
        rows = conn.execute(_dependents_statement(), {"ended": ended}).all()
    return [r.job_id for r in rows]


@functools.cache
def _dependents_of_statement() -> Any:
    return sa.select(EDGE.c.job_id).where(EDGE.c.depends_on_id == sa.bindparam("ended")).distinct()


def dependents_of(conn: Connection, job_id: int) -> list[int]:
    """The jobs waiting for `job_id`, read in the caller's transaction (a worker's, as it records
    the job's end: no connection of its own for the one query every finished job runs)."""
    return list(conn.execute(_dependents_of_statement(), {"ended": job_id}).scalars())


def warm_up() -> None:
    """Compile the queries finished jobs run, before a worker forks its work-horses."""
    _dependents([0])
    with store.get_engine().connect() as conn:
        dependents_of(conn, 0)


@store.guarded
def after_end(job_ids: Iterable[int], *, own_waits: bool = True) -> Resolution:
    """Jobs reached a terminal state: resolve what waited for them (and forget their own waits, for
    jobs that may have ended while blocked: `own_waits`)."""
    ids = list(job_ids)
    todo = [*_dependents(ids), *(ids if own_waits else [])]
    return resolve(todo) if todo else Resolution()


@store.guarded
def sweep() -> Resolution:
    """Resolve every wait whose dependency has ended or whose waiting row moved on (run periodically,
    so a job ended by any path, e.g. a lost worker found by reconciliation, releases its dependents)."""
    dep = JOB.alias("dep")
    waiter = JOB.alias("waiter")
    with store.get_engine().connect() as conn:
        ready = conn.execute(
            sa.select(EDGE.c.job_id)
            .select_from(EDGE.outerjoin(dep, dep.c.id == EDGE.c.depends_on_id))
            .where(sa.or_(dep.c.id.is_(None), dep.c.status.in_(_TERMINAL)))
            .distinct()
        ).all()
        moved = conn.execute(
            sa.select(EDGE.c.job_id)
            .select_from(EDGE.join(waiter, waiter.c.id == EDGE.c.job_id))
            .where(sa.or_(waiter.c.status != JobStatus.PENDING.value, sa.not_(waiter.c.blocked)))
            .distinct()
        ).all()
    if moved:  # a row that is not waiting never waits again: its leftover waits can go
        with store.begin() as conn:
            conn.execute(sa.delete(EDGE).where(EDGE.c.job_id.in_([r.job_id for r in moved])))
    ids = [r.job_id for r in ready]
    return resolve(ids) if ids else Resolution()
