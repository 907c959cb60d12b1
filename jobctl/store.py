"""The SQL store: engines, schema checks and queries on job rows. No business rules."""

from __future__ import annotations

import contextlib
import functools
import os
from collections.abc import Callable, Iterator, Sequence
from datetime import datetime
from typing import Any, ParamSpec, TypeVar

import sqlalchemy as sa
from sqlalchemy import exc as sa_exc
from sqlalchemy.engine import Connection, Engine

from .config import get_settings, mask_url
from .errors import BackendError
from .models import ACTIVE, TERMINAL, Job, JobStatus, utcnow

HEAD_REVISION = "0003"

P = ParamSpec("P")
T = TypeVar("T")

_engines: dict[tuple[int, str], Engine] = {}
_schema_checked: set[str] = set()
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
                # After a fork: a fresh pool, but the parent's compiled statements are kept.
                inherited.dispose(close=False)
                del _engines[(pid, other_url)]
                if other_url == url:
                    engine = inherited
        if engine is None:
            engine = make_engine(url)
        if url not in _schema_checked:  # a forked work-horse trusts its parent's check
            _ensure_schema(engine, url)
            _schema_checked.add(url)
        _engines[key] = engine
    return engine


def warm_up() -> None:
    """Compile what a job's process runs and build the row validator, before a worker forks."""
    claim(0, 1, None)
    finish(0, 1, JobStatus.COMPLETED, result=None)
    now = utcnow()
    _row_to_job_dict(Job(name="", task="", queue="", created_at=now, updated_at=now).model_dump())


def close_idle_connections() -> None:
    """Close this process's pooled connections that are not in use.

    A worker calls this before it forks: SQLite connections must not be open across a fork.
    """
    for (pid, _url), engine in list(_engines.items()):
        if pid == os.getpid():
            engine.dispose()


def reset_engines() -> None:
    """Forget every engine (tests and settings changes)."""
    for engine in _engines.values():
        engine.dispose()
    _engines.clear()
    _schema_checked.clear()


def _ensure_schema(engine: Engine, url: str) -> None:
    try:
        revision = current_revision(engine)
    except (sa_exc.OperationalError, sa_exc.InterfaceError) as exc:
        raise backend_error(url, exc) from None
    if revision == HEAD_REVISION:
        return
    if engine.dialect.name == "sqlite":
        upgrade_schema(engine)
        return
    raise BackendError(
        f"the database at {mask_url(url)} has schema {revision or 'none'}, expected {HEAD_REVISION}: "
        "run `jobctl db upgrade`"
    )


def current_revision(engine: Engine) -> str | None:
    """The Alembic revision the database is at, or None for an empty database."""
    with engine.connect() as conn:
        if not sa.inspect(conn).has_table("alembic_version"):
            return None
        return conn.execute(sa.text("SELECT version_num FROM alembic_version")).scalar()


def upgrade_schema(engine: Engine | None = None) -> str:
    """Apply every Alembic migration; returns the revision reached."""
    from alembic import command
    from alembic.config import Config

    url = get_settings().resolved_database_url()
    engine = engine or make_engine(url)
    cfg = Config()
    cfg.set_main_option("script_location", "jobctl:migrations")
    try:
        with _schema_lock(engine), engine.begin() as conn:
            cfg.attributes["connection"] = conn
            command.upgrade(cfg, "head")
    except (sa_exc.OperationalError, sa_exc.InterfaceError) as exc:
        raise backend_error(url, exc) from None
    return current_revision(engine) or ""


@contextlib.contextmanager
def _schema_lock(engine: Engine) -> Iterator[None]:
    """Serialise migrations between processes sharing one SQLite file."""
    database = engine.url.database
    if engine.dialect.name != "sqlite" or not database or database == ":memory:":
        yield
        return
    import fcntl

    with open(database + ".lock", "a+") as fh:
        fcntl.flock(fh, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(fh, fcntl.LOCK_UN)


@contextlib.contextmanager
def begin() -> Iterator[Connection]:
    """A connection in a transaction, committed on success."""
    with get_engine().connect() as conn:
        conn.execution_options(immediate=True)
        with conn.begin():
            yield conn


def _row_to_job(row: sa.Row[Any]) -> Job:
    return _row_to_job_dict(dict(row._mapping))


def _row_to_job_dict(values: dict[str, Any]) -> Job:
    return Job.model_validate(values)


# ---------------------------------------------------------------- writes


def _attempt_errors(conn: Connection, job_id: int, attempt: int, error: str) -> list[dict[str, Any]]:
    """The row's attempt errors with `attempt`'s added (read in the writing transaction)."""
    from .backoff import with_error

    existing = conn.execute(sa.select(JOB.c.attempt_errors).where(JOB.c.id == job_id)).scalar()
    return with_error(existing, attempt, error)


@guarded
def insert_jobs(rows: Sequence[dict[str, Any]], queue_id: Callable[[int], str]) -> list[Job]:
    """Insert pending rows in one transaction; `queue_id(id)` names each row's RQ job."""
    with begin() as conn:
        return insert_rows(conn, rows, queue_id)


def insert_rows(
    conn: Connection, rows: Sequence[dict[str, Any]], queue_id: Callable[[int], str]
) -> list[Job]:
    """Insert pending rows within the caller's transaction (see insert_jobs)."""
    now = utcnow()
    values = [
        {**row, "status": JobStatus.PENDING.value, "attempts": 0, "created_at": now, "updated_at": now}
        for row in rows
    ]
    result = conn.execute(sa.insert(JOB).returning(JOB.c.id, sort_by_parameter_order=True), values)
    ids = [r[0] for r in result]
    conn.execute(
        sa.update(JOB).where(JOB.c.id == sa.bindparam("b_id")).values(task_id=sa.bindparam("b_task_id")),
        [{"b_id": i, "b_task_id": queue_id(i)} for i in ids],
    )
    return [
        Job.model_validate({**v, "id": i, "task_id": queue_id(i)}) for v, i in zip(values, ids, strict=True)
    ]


@guarded
def claim(job_id: int, attempt: int, worker: str | None) -> Job | None:
    """Move a pending row to processing for `attempt`; None when the row is no longer pending for it."""
    now = utcnow()
    with begin() as conn:
        row = conn.execute(
            sa.update(JOB)
            .where(JOB.c.id == job_id, JOB.c.status == JobStatus.PENDING.value, JOB.c.attempts == attempt - 1)
            .values(
                status=JobStatus.PROCESSING.value,
                attempts=attempt,
                worker=worker,
                started_at=now,
                updated_at=now,
                completed_at=None,
                progress=None,
            )
            .returning(*JOB.c)
        ).first()
    return _row_to_job(row) if row is not None else None


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
    now = utcnow()
    values: dict[str, Any] = {"status": status.value, "updated_at": now, "completed_at": now}
    values.update(result=result, error=error)
    if progress is not None:
        values["progress"] = progress
    with begin() as conn:
        if error is not None and status is JobStatus.FAILED:
            values["attempt_errors"] = _attempt_errors(conn, job_id, attempt, error)
        done = conn.execute(
            sa.update(JOB)
            .where(JOB.c.id == job_id, JOB.c.attempts == attempt, JOB.c.status == JobStatus.PROCESSING.value)
            .values(**values)
        )
    return done.rowcount == 1


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
            return JobStatus(before), _row_to_job(current) if current else None
    return JobStatus(before), _row_to_job(row)


@guarded
def reopen(job_id: int, queue_id: Callable[[int, int], str]) -> tuple[bool, Job | None]:
    """Return a failed or cancelled row to pending for one more attempt."""
    now = utcnow()
    with begin() as conn:
        current = conn.execute(sa.select(JOB).where(JOB.c.id == job_id)).first()
        if current is None:
            return False, None
        job = _row_to_job(current)
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
    return True, _row_to_job(row)


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
    return _row_to_job(row) if row is not None else None


@guarded
def get_jobs(job_ids: Sequence[int]) -> dict[int, Job]:
    """Rows by id, in one query."""
    if not job_ids:
        return {}
    with get_engine().connect() as conn:
        rows = conn.execute(sa.select(JOB).where(JOB.c.id.in_(list(job_ids)))).all()
    return {r.id: _row_to_job(r) for r in rows}


@guarded
def list_jobs(
    *,
    statuses: Sequence[str] = (),
    task: str | None = None,
    queue: str | None = None,
    limit: int = 100,
    offset: int = 0,
    since: datetime | None = None,
    name_like: str | None = None,
    order: Sequence[tuple[str, bool]] = (),
) -> list[Job]:
    """Rows matching the filters, newest first unless `order` names (SORT_KEYS key, descending) pairs."""
    engine = get_engine()
    query = sa.select(JOB)
    if statuses:
        query = query.where(JOB.c.status.in_(list(statuses)))
    if task:
        query = query.where(JOB.c.task == task)
    if queue:
        query = query.where(JOB.c.queue == queue)
    if since is not None:
        query = query.where(JOB.c.created_at >= since)
    if name_like is not None:
        query = query.where(JOB.c.name.ilike(name_like, escape="\\"))
    for key, descending in order:
        column = _sort_column(key, engine.dialect.name)
        query = query.order_by(column.desc().nulls_last() if descending else column.asc().nulls_last())
    query = query.order_by(JOB.c.id.desc()).limit(limit).offset(offset)
    with engine.connect() as conn:
        return [_row_to_job(r) for r in conn.execute(query)]


SORT_KEYS = (
    "id",
    "name",
    "task",
    "status",
    "queue",
    "attempts",
    "created",
    "started",
    "completed",
    "updated",
    "duration",
)


def _sort_column(key: str, dialect: str) -> Any:
    if key == "duration":
        return seconds_between(JOB.c.started_at, JOB.c.completed_at, dialect)
    return JOB.c[f"{key}_at" if key in ("created", "started", "completed", "updated") else key]


def seconds_between(start: Any, end: Any, dialect: str) -> Any:
    """A SQL expression for the seconds from `start` to `end` (NULL when either is NULL)."""
    if dialect == "sqlite":
        return (sa.func.julianday(end) - sa.func.julianday(start)) * 86_400.0
    return sa.extract("epoch", end - start)


@guarded
def active_jobs(older_than: datetime | None = None) -> list[Job]:
    """Rows that are pending or processing (optionally last touched before a time)."""
    query = sa.select(JOB).where(JOB.c.status.in_([s.value for s in ACTIVE]))
    if older_than is not None:
        query = query.where(JOB.c.updated_at < older_than)
    with get_engine().connect() as conn:
        return [_row_to_job(r) for r in conn.execute(query.order_by(JOB.c.id))]


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
        return [_row_to_job(r) for r in conn.execute(query)]


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
