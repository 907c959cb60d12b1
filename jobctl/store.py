"""The SQL store: engines, schema checks and queries on job rows. No business rules."""

from __future__ import annotations

import contextlib
import functools
import os
from collections.abc import Callable, Iterator, Sequence
from datetime import datetime
from typing import Any, NamedTuple, ParamSpec, TypeVar

import sqlalchemy as sa
from sqlalchemy import exc as sa_exc
from sqlalchemy.engine import Connection, Engine
from sqlalchemy.orm import configure_mappers
from sqlalchemy.orm.instrumentation import manager_of_class

from .config import get_settings, mask_url
from .errors import BackendError
from .inserts import insert_values
from .models import ACTIVE, TERMINAL, Job, JobStatus, utcnow

P = ParamSpec("P")
T = TypeVar("T")

_engines: dict[tuple[int, str], Engine] = {}
_schema_checked: set[str] = set()
_inherited_pools: list[Any] = []  # a forked process's copies of its parent's pools, kept unused
JOB = Job.__table__  # type: ignore[attr-defined]


def _reason(exc: BaseException) -> str:
    orig = getattr(exc, "orig", None) or exc
    text = str(orig).strip().splitlines()
    return text[0] if text else type(orig).__name__


def backend_error(url: str, exc: BaseException) -> BackendError:
    """A one-line error naming the database (password masked) and why it failed."""
    return BackendError(f"cannot reach the database at {mask_url(url)} ({_reason(exc)})")


def guarded(fn: Callable[P, T]) -> Callable[P, T]:
    """Turn database connection failures into a BackendError."""

    @functools.wraps(fn)
    def wrapper(*args: P.args, **kwargs: P.kwargs) -> T:
        try:
            return fn(*args, **kwargs)
        except (sa_exc.OperationalError, sa_exc.InterfaceError) as exc:
            raise backend_error(get_settings().resolved_database_url(), exc) from None

    return wrapper


def _sqlite_connect(dbapi_conn: Any, _record: Any) -> None:
    # Let SQLAlchemy, not the driver, emit BEGIN (see _sqlite_begin).
    dbapi_conn.isolation_level = None
    cur = dbapi_conn.cursor()
    cur.execute("PRAGMA journal_mode=WAL")
    cur.execute("PRAGMA synchronous=NORMAL")
    cur.execute("PRAGMA busy_timeout=30000")
    cur.close()


def _sqlite_begin(conn: Connection) -> None:
    # Writers take the lock at BEGIN so concurrent writers wait (busy timeout) instead of
    # failing when a read lock would have to be upgraded.
    immediate = conn.get_execution_options().get("immediate", False)
    conn.exec_driver_sql("BEGIN IMMEDIATE" if immediate else "BEGIN")


def make_engine(url: str) -> Engine:
    """A new engine for `url`, with SQLite set up for several writing processes."""
    try:
        sa_url = sa.engine.make_url(url)
    except sa_exc.ArgumentError as exc:
        raise BackendError(f"malformed database URL {mask_url(url)!r} ({exc})") from None
    if sa_url.get_backend_name() == "sqlite":
        if sa_url.database and sa_url.database != ":memory:":
            try:
                os.makedirs(os.path.dirname(os.path.abspath(sa_url.database)), exist_ok=True)
            except OSError as exc:
                raise backend_error(url, exc) from None
        engine = sa.create_engine(url, connect_args={"timeout": 30, "check_same_thread": False})
        sa.event.listen(engine, "connect", _sqlite_connect)
        sa.event.listen(engine, "begin", _sqlite_begin)
        return engine
    try:
        return sa.create_engine(url, pool_pre_ping=True, connect_args=_connect_args(sa_url))
    except (sa_exc.ArgumentError, ImportError) as exc:
        raise BackendError(f"malformed database URL {mask_url(url)!r} ({exc})") from None


def _connect_args(url: sa.URL) -> dict[str, Any]:
    if url.get_backend_name() == "postgresql":
        return {"connect_timeout": 5}
    return {}


def get_engine() -> Engine:
    """This process's engine for the configured database (never shared across a fork)."""
    url = get_settings().resolved_database_url()
    key = (os.getpid(), url)
    engine = _engines.get(key)
    if engine is None:
        for (pid, other_url), inherited in list(_engines.items()):
            if pid != os.getpid():
                # After a fork: a fresh pool, but the parent's compiled statements are kept. The
                # parent's connections stay referenced, never closed here: closing a copy of an
                # SQLite connection can undo what another process committed to the WAL, and closing
                # a PostgreSQL one ends the parent's session.
                _inherited_pools.append(inherited.pool)
                inherited.dispose(close=False)
                del _engines[(pid, other_url)]
                if other_url == url:
                    engine = inherited
        if engine is None:
            engine = make_engine(url)
        if url not in _schema_checked:  # a forked work-horse trusts its parent's check
            from .schema import ensure_schema

            ensure_schema(engine, url)
            _schema_checked.add(url)
        _engines[key] = engine
    return engine


def close_idle_connections() -> None:
    """Close this process's pooled connections that are not in use (a worker pool, before it forks
    its workers, which would only carry them unused)."""
    for (pid, _url), engine in list(_engines.items()):
        pool: Any = engine.pool
        if pid == os.getpid() and (not hasattr(pool, "checkedin") or pool.checkedin()):
            engine.dispose()


def reset_engines() -> None:
    """Forget every engine (tests and settings changes)."""
    for engine in _engines.values():
        engine.dispose()
    _engines.clear()
    _schema_checked.clear()


@contextlib.contextmanager
def begin() -> Iterator[Connection]:
    """A connection in a transaction, committed on success."""
    with get_engine().connect() as conn:
        conn.execution_options(immediate=True)
        with conn.begin():
            yield conn


@functools.cache
def job_factory() -> Callable[[], Job]:
    configure_mappers()  # as the ORM does before it loads its first row
    return manager_of_class(Job).new_instance


def row_to_job(row: sa.Row[Any]) -> Job:
    """A Job from a full row of the job table, made as the ORM makes a loaded row: the database's
    values are taken as they are (validating them costs 30 times as much)."""
    job = job_factory()()
    job.__dict__.update(row._mapping)
    return job


def job_from_values(values: dict[str, Any]) -> Job:
    """A Job from a row's column values (validated: about 100 µs a row, so bulk paths avoid it)."""
    return Job.model_validate(values)


# ---------------------------------------------------------------- writes


@guarded
def insert_jobs(rows: Sequence[dict[str, Any]], queue_id: Callable[[int], str]) -> list[Job]:
    """Insert pending rows in one transaction; `queue_id(id)` names each row's RQ job."""
    with begin() as conn:
        return insert_rows(conn, rows, queue_id)


def insert_rows(
    conn: Connection, rows: Sequence[dict[str, Any]], queue_id: Callable[[int], str]
) -> list[Job]:
    """Insert pending rows within the caller's transaction (see insert_jobs)."""
    return [job_from_values(values) for values in insert_values(conn, rows, queue_id)]


@guarded
def cancel(job_id: int) -> tuple[JobStatus | None, Job | None]:
    """Mark an active row cancelled; returns the status it had and the row (None if not found)."""
    now = utcnow()
    with begin() as conn:
        # Locked: a claim committing between this read and the update would make a running job
        # look pending, and the cancel would then not stop it.
        before = conn.execute(sa.select(JOB.c.status).where(JOB.c.id == job_id).with_for_update()).scalar()
        if before is None:
            return None, None
        row = conn.execute(
            sa.update(JOB)
            .where(JOB.c.id == job_id, JOB.c.status.in_([s.value for s in ACTIVE]))
            .values(status=JobStatus.CANCELLED.value, completed_at=now, updated_at=now)
            .returning(*JOB.c)
        ).first()
        if row is None:
            current = conn.execute(sa.select(JOB).where(JOB.c.id == job_id)).first()
            return JobStatus(before), row_to_job(current) if current else None
    return JobStatus(before), row_to_job(row)


@guarded
def reopen(job_id: int, queue_id: Callable[[int, int], str]) -> tuple[bool, Job | None]:
    """Return a failed or cancelled row to pending for one more attempt."""
    now = utcnow()
    with begin() as conn:
        current = conn.execute(sa.select(JOB).where(JOB.c.id == job_id)).first()
        if current is None:
            return False, None
        job = row_to_job(current)
        if job.status not in (JobStatus.FAILED.value, JobStatus.CANCELLED.value):
            return False, job
        row = conn.execute(
            sa.update(JOB)
            .where(JOB.c.id == job_id, JOB.c.status == job.status, JOB.c.attempts == job.attempts)
            .values(
                status=JobStatus.PENDING.value,
                task_id=queue_id(job_id, job.attempts + 1),
                updated_at=now,
                completed_at=None,
                started_at=None,
                worker=None,
                result=None,
                scheduled_for=None,  # a retry by hand runs now, whatever the job was scheduled for
                blocked=False,
            )
            .returning(*JOB.c)
        ).first()
    if row is None:
        return False, get_job(job_id)
    return True, row_to_job(row)


@guarded
def fail_unqueued(job_ids: Sequence[int], error: str) -> int:
    """Mark pending rows whose enqueue failed as failed; returns how many changed."""
    now = utcnow()
    with begin() as conn:
        done = conn.execute(
            sa.update(JOB)
            .where(JOB.c.id.in_(list(job_ids)), JOB.c.status == JobStatus.PENDING.value)
            .values(status=JobStatus.FAILED.value, error=error, completed_at=now, updated_at=now)
        )
    return done.rowcount


# ---------------------------------------------------------------- reads


@guarded
def get_job(job_id: int) -> Job | None:
    """One row by id."""
    with get_engine().connect() as conn:
        row = conn.execute(sa.select(JOB).where(JOB.c.id == job_id)).first()
    return row_to_job(row) if row is not None else None


@guarded
def get_jobs(job_ids: Sequence[int]) -> dict[int, Job]:
    """Rows by id, in one query."""
    if not job_ids:
        return {}
    with get_engine().connect() as conn:
        rows = conn.execute(sa.select(JOB).where(JOB.c.id.in_(list(job_ids)))).all()
    return {r.id: row_to_job(r) for r in rows}


class ActiveRow(NamedTuple):
    """What reconciliation reads of every active row; it loads the whole row only to act on it."""

    id: int
    status: str
    attempts: int
    worker: str | None
    blocked: bool
    queue: str
    priority: str
    started_at: datetime | None
    updated_at: datetime


@guarded
def active_rows() -> list[ActiveRow]:
    """Every pending or processing row, oldest first, as `ActiveRow`s (no model built per row)."""
    columns = [JOB.c[name] for name in ActiveRow._fields]
    query = sa.select(*columns).where(JOB.c.status.in_([s.value for s in ACTIVE])).order_by(JOB.c.id)
    with get_engine().connect() as conn:
        return [ActiveRow(*r) for r in conn.execute(query)]


@guarded
def active_jobs(older_than: datetime | None = None) -> list[Job]:
    """Rows that are pending or processing (optionally last touched before a time)."""
    query = sa.select(JOB).where(JOB.c.status.in_([s.value for s in ACTIVE]))
    if older_than is not None:
        query = query.where(JOB.c.updated_at < older_than)
    with get_engine().connect() as conn:
        return [row_to_job(r) for r in conn.execute(query.order_by(JOB.c.id))]


@guarded
def job_states(job_ids: Sequence[int]) -> dict[int, tuple[str, str | None, int]]:
    """(status, task_id, attempts) of rows by id in one query: a cheap way to tell which rows moved."""
    if not job_ids:
        return {}
    columns = (JOB.c.id, JOB.c.status, JOB.c.task_id, JOB.c.attempts)
    query = sa.select(*columns).where(JOB.c.id.in_(list(job_ids)))
    with get_engine().connect() as conn:
        return {r.id: (r.status, r.task_id, r.attempts) for r in conn.execute(query)}


@guarded
def active_job_ids() -> list[int]:
    """Ids of the pending and processing rows (the status index), oldest first."""
    query = sa.select(JOB.c.id).where(JOB.c.status.in_([s.value for s in ACTIVE])).order_by(JOB.c.id)
    with get_engine().connect() as conn:
        return list(conn.execute(query).scalars())


@guarded
def jobs_after(last_id: int, limit: int = 1000) -> list[Job]:
    """Rows with an id above `last_id`, oldest first: how a watcher notices new jobs (primary key scan)."""
    query = sa.select(JOB).where(JOB.c.id > last_id).order_by(JOB.c.id).limit(limit)
    with get_engine().connect() as conn:
        return [row_to_job(r) for r in conn.execute(query)]


@guarded
def max_job_id() -> int:
    """The highest id in the table, 0 when it is empty."""
    with get_engine().connect() as conn:
        return int(conn.execute(sa.select(sa.func.max(JOB.c.id))).scalar() or 0)


@guarded
def ping() -> None:
    """Run a trivial query, raising BackendError when the database does not answer."""
    with get_engine().connect() as conn:
        conn.execute(sa.text("SELECT 1"))


def is_terminal(status: str) -> bool:
    """True for completed, failed and cancelled."""
    return status in {s.value for s in TERMINAL}
