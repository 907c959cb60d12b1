"""The writes that move one attempt through its row: the claim, the outcome, the requeue for a retry.

Each is a compare-and-set on the row's status and attempt number, so a late or repeated writer never
overwrites a newer state (terminal states are sticky).
"""

from __future__ import annotations

import functools
from datetime import datetime
from typing import Any

import sqlalchemy as sa
from sqlalchemy.engine import Connection

from .models import Job, JobStatus, utcnow
from .store import JOB, begin, guarded, job_factory, row_to_job


# The two writes every attempt makes, built once: only their parameters change.
@functools.cache
def _claim_statement() -> Any:
    return (
        sa.update(JOB)
        .where(
            JOB.c.id == sa.bindparam("p_id"),
            JOB.c.status == JobStatus.PENDING.value,
            JOB.c.attempts == sa.bindparam("p_previous"),
        )
        .values(
            status=JobStatus.PROCESSING.value,
            attempts=sa.bindparam("p_attempt"),
            worker=sa.bindparam("p_worker"),
            started_at=sa.bindparam("p_now"),
            updated_at=sa.bindparam("p_now"),
            completed_at=None,
            progress=None,
        )
        .returning(*JOB.c)
    )


@functools.cache
def _finish_statement(columns: tuple[str, ...]) -> Any:
    return (
        sa.update(JOB)
        .where(
            JOB.c.id == sa.bindparam("p_id"),
            JOB.c.attempts == sa.bindparam("p_attempt"),
            JOB.c.status == JobStatus.PROCESSING.value,
        )
        .values({name: sa.bindparam(f"p_{name}") for name in columns})
    )


def _claim(conn: Connection, job_id: int, attempt: int, worker: str | None) -> Job | None:
    params = {
        "p_id": job_id,
        "p_previous": attempt - 1,
        "p_attempt": attempt,
        "p_worker": worker,
        "p_now": utcnow(),
    }
    row = conn.execute(_claim_statement(), params).first()
    return row_to_job(row) if row is not None else None


def _finish(conn: Connection, job_id: int, attempt: int, status: JobStatus, outcome: dict[str, Any]) -> bool:
    """`outcome`: the result, error and progress to store (see `finish`)."""
    now = utcnow()
    error = outcome.get("error")
    values: dict[str, Any] = {"status": status.value, "updated_at": now, "completed_at": now}
    values.update(result=outcome.get("result"), error=error)
    if outcome.get("progress") is not None:
        values["progress"] = outcome["progress"]
    if error is not None and status is JobStatus.FAILED:
        values["attempt_errors"] = _attempt_errors(conn, job_id, attempt, error)
    params = {f"p_{name}": value for name, value in values.items()}
    done = conn.execute(_finish_statement(tuple(values)), {**params, "p_id": job_id, "p_attempt": attempt})
    return done.rowcount == 1


@guarded
def claim(job_id: int, attempt: int, worker: str | None) -> Job | None:
    """Move a pending row to processing for `attempt`; None when the row is no longer pending for it."""
    with begin() as conn:
        return _claim(conn, job_id, attempt, worker)


@guarded
def finish(
    job_id: int,
    attempt: int,
    status: JobStatus,
    *,
    result: Any = None,
    error: str | None = None,
    progress: dict[str, Any] | None = None,
) -> bool:
    """Record the outcome of `attempt`; False if the row moved on (terminal states are sticky)."""
    outcome = {"result": result, "error": error, "progress": progress}
    with begin() as conn:
        return _finish(conn, job_id, attempt, status, outcome)


@guarded
def finish_then_claim(
    finished: tuple[int, int, JobStatus, dict[str, Any]], job_id: int, attempt: int, worker: str | None
) -> tuple[list[int] | None, Job | None]:
    """One transaction (one commit) for a worker going from one job to the next: record the outcome
    of the attempt `finished` names (job id, attempt, status, `finish`'s keywords), then claim the
    next. Returns the jobs waiting for the finished one (None if its row had moved on, as `finish`
    returns False) and what `claim` would."""
    from .dependencies import dependents_of

    done_id, done_attempt, status, outcome = finished
    with begin() as conn:
        done = _finish(conn, done_id, done_attempt, status, outcome)
        return dependents_of(conn, done_id) if done else None, _claim(conn, job_id, attempt, worker)


@guarded
def requeue_after_failure(
    job_id: int,
    attempt: int,
    *,
    error: str,
    progress: dict[str, Any] | None,
    task_id: str,
    scheduled_for: datetime | None = None,
) -> bool:
    """Return a failed attempt to pending for its next try (due at `scheduled_for`, or at once);
    False if the row moved on."""
    values: dict[str, Any] = {
        "status": JobStatus.PENDING.value,
        "error": error,
        "task_id": task_id,
        "updated_at": utcnow(),
        "scheduled_for": scheduled_for,
    }
    if progress is not None:
        values["progress"] = progress
    with begin() as conn:
        values["attempt_errors"] = _attempt_errors(conn, job_id, attempt, error)
        done = conn.execute(
            sa.update(JOB)
            .where(JOB.c.id == job_id, JOB.c.attempts == attempt, JOB.c.status == JobStatus.PROCESSING.value)
            .values(**values)
        )
    return done.rowcount == 1


def _attempt_errors(conn: Connection, job_id: int, attempt: int, error: str) -> list[dict[str, Any]]:
    """The row's attempt errors with `attempt`'s added (read in the writing transaction)."""
    from .backoff import with_error

    existing = conn.execute(sa.select(JOB.c.attempt_errors).where(JOB.c.id == job_id)).scalar()
    return with_error(existing, attempt, error)


def warm_up() -> None:
    """Compile what a job's process runs and set up the row reader, before a worker forks."""
    claim(0, 1, None)
    finish(0, 1, JobStatus.COMPLETED, result=None)
    job_factory()
