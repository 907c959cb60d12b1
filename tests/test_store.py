"""The SQL record: schema management, fenced writes, sticky terminal states, UTC timestamps."""

from __future__ import annotations

import uuid

import pytest
import sqlalchemy as sa

from jobctl import store
from jobctl.models import JobStatus
from jobctl.queue import rq_job_id
from tests.conftest import HAVE_POSTGRES, POSTGRES_ADMIN_URL


def new_job(name: str = "j") -> int:
    (job,) = store.insert_jobs(
        [
            {
                "name": name,
                "description": "",
                "task": "noop",
                "args": {},
                "queue": "default",
                "timeout": None,
                "retries": 0,
            }
        ],
        lambda i: rq_job_id(i, 1),
    )
    assert job.id is not None
    return job.id


def test_claim_is_a_compare_and_set_fenced_by_attempt(env):
    job_id = new_job()
    assert store.claim(job_id, 2, "w") is None  # not this attempt
    claimed = store.claim(job_id, 1, "w1")
    assert claimed is not None and claimed.status == "processing" and claimed.attempts == 1
    assert store.claim(job_id, 1, "w2") is None  # a second worker with the same RQ job loses
    assert store.get_job(job_id).worker == "w1"


def test_terminal_states_are_sticky_and_late_writers_are_ignored(env):
    job_id = new_job()
    store.claim(job_id, 1, "w")
    before, cancelled = store.cancel(job_id)
    assert before is JobStatus.PROCESSING and cancelled.status == "cancelled"
    assert not store.finish(job_id, 1, JobStatus.COMPLETED, result={"late": True})
    assert not store.finish(job_id, 1, JobStatus.FAILED, error="late")
    row = store.get_job(job_id)
    assert row.status == "cancelled" and row.result is None and row.error is None


def test_an_old_attempt_cannot_overwrite_a_newer_one(env):
    job_id = new_job()
    store.claim(job_id, 1, "w")
    store.finish(job_id, 1, JobStatus.FAILED, error="first")
    reopened, job = store.reopen(job_id, rq_job_id)
    assert reopened and job.status == "pending" and job.task_id == rq_job_id(job_id, 2)
    store.claim(job_id, 2, "w")
    assert not store.finish(job_id, 1, JobStatus.COMPLETED, result="stale")
    assert store.finish(job_id, 2, JobStatus.COMPLETED, result="fresh")
    assert store.get_job(job_id).result == "fresh"


def test_timestamps_are_timezone_aware_utc(env):
    job_id = new_job()
    store.claim(job_id, 1, "w")
    store.finish(job_id, 1, JobStatus.COMPLETED, result=None)
    row = store.get_job(job_id)
    for stamp in (row.created_at, row.updated_at, row.started_at, row.completed_at):
        assert stamp is not None and stamp.utcoffset().total_seconds() == 0
    assert row.created_at <= row.started_at <= row.completed_at


def test_values_round_trip_exactly(env):
    name = "naïve \t\n\x1b[1m [b]x[/b] " + "z" * 10_000
    (job,) = store.insert_jobs(
        [
            {
                "name": name,
                "description": "d\r\n",
                "task": "noop",
                "args": {"nested": {"a": [1, 2.5, None]}},
                "queue": "q",
                "timeout": 5,
                "retries": 2,
            }
        ],
        lambda i: rq_job_id(i, 1),
    )
    row = store.get_job(job.id)
    assert row.name == name and row.description == "d\r\n" and row.args == {"nested": {"a": [1, 2.5, None]}}


def test_list_query_uses_an_index_for_status_filter(env, backend):
    for _ in range(3):
        new_job()
    with store.get_engine().connect() as conn:
        if backend == "sqlite":
            plan = conn.exec_driver_sql(
                "EXPLAIN QUERY PLAN SELECT * FROM job WHERE status IN ('pending') ORDER BY id DESC LIMIT 100"
            ).all()
            assert "ix_job_status_id" in " ".join(str(r) for r in plan)
        else:
            conn.exec_driver_sql("SET enable_seqscan = off")
            plan = conn.exec_driver_sql(
                "EXPLAIN SELECT * FROM job WHERE status = 'pending' ORDER BY id DESC LIMIT 100"
            ).all()
            assert "ix_job_status_id" in " ".join(str(r) for r in plan)


@pytest.mark.skipif(not HAVE_POSTGRES, reason="PostgreSQL server not available")
@pytest.mark.parametrize("backend", ["postgres"])
def test_postgres_needs_db_upgrade_and_db_upgrade_creates_the_schema(run, backend):
    import psycopg2

    name = f"jobctl_fresh_{uuid.uuid4().hex[:8]}"
    admin = psycopg2.connect(POSTGRES_ADMIN_URL)
    admin.autocommit = True
    admin.cursor().execute(f'CREATE DATABASE "{name}"')
    url = POSTGRES_ADMIN_URL.rsplit("/", 1)[0] + "/" + name
    try:
        out = run("list", DATABASE_URL=url)
        assert out.returncode == 4
        assert "has schema none, expected" in out.stderr and "jobctl db upgrade" in out.stderr
        out = run("db", "upgrade", DATABASE_URL=url)
        assert out.returncode == 0 and f"revision {store.HEAD_REVISION}" in out.stderr
        assert run("db", "upgrade", DATABASE_URL=url).returncode == 0  # idempotent
        assert run("submit", "x", "-t", "noop", DATABASE_URL=url).returncode == 0
        engine = sa.create_engine(url.replace("postgresql://", "postgresql+psycopg2://"))
        with engine.connect() as conn:
            assert conn.exec_driver_sql("SELECT count(*) FROM job").scalar() == 1
        engine.dispose()
    finally:
        admin.cursor().execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
        admin.close()


@pytest.mark.parametrize("backend", ["sqlite"])
def test_sqlite_creates_its_schema_on_first_use(run, tmp_path, backend):
    url = f"sqlite:///{tmp_path / 'fresh' / 'x.db'}"
    out = run("submit", "x", "-t", "noop", DATABASE_URL=url)
    assert out.returncode == 0, out.stderr
    assert (tmp_path / "fresh" / "x.db").exists()
