"""The SQL record: schema management, fenced writes, sticky terminal states, UTC timestamps."""

from __future__ import annotations

import uuid

import pytest
import sqlalchemy as sa

from jobctl import lifecycle, listing, schema, store
from jobctl.models import Job, JobStatus
from jobctl.queue import rq_job_id
from tests.conftest import HAVE_POSTGRES, POSTGRES_ADMIN_URL, postgres_database, postgres_database_url


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
    assert lifecycle.claim(job_id, 2, "w") is None  # not this attempt
    claimed = lifecycle.claim(job_id, 1, "w1")
    assert claimed is not None and claimed.status == "processing" and claimed.attempts == 1
    assert lifecycle.claim(job_id, 1, "w2") is None  # a second worker with the same RQ job loses
    assert store.get_job(job_id).worker == "w1"


def test_a_worker_recording_an_end_with_its_next_claim_learns_which_jobs_wait_for_the_ended_one(env):
    from jobctl.dependencies import EDGE

    first, second, third, waiting, other = (new_job(name) for name in ("1", "2", "3", "waits", "other"))
    with store.begin() as conn:
        conn.execute(
            sa.insert(EDGE),
            [
                {"job_id": waiting, "depends_on_id": first},
                {"job_id": other, "depends_on_id": first},
                {"job_id": waiting, "depends_on_id": third},
            ],
        )
    outcome = {"result": None, "error": None, "progress": None}
    lifecycle.claim(first, 1, "w")
    dependents, claimed = lifecycle.finish_then_claim(
        (first, 1, JobStatus.COMPLETED, outcome), second, 1, "w"
    )
    assert sorted(dependents or []) == sorted([waiting, other])
    assert claimed is not None and claimed.id == second and claimed.status == "processing"
    dependents, claimed = lifecycle.finish_then_claim((second, 1, JobStatus.FAILED, outcome), third, 1, "w")
    assert dependents == [] and claimed is not None  # nothing waits for the second
    dependents, claimed = lifecycle.finish_then_claim(
        (second, 1, JobStatus.COMPLETED, outcome), third, 1, "w"
    )
    assert dependents is None and claimed is None  # the second had ended, the third is claimed already
    assert store.get_job(second).status == "failed"


def test_terminal_states_are_sticky_and_late_writers_are_ignored(env):
    job_id = new_job()
    lifecycle.claim(job_id, 1, "w")
    before, cancelled = store.cancel(job_id)
    assert before is JobStatus.PROCESSING and cancelled.status == "cancelled"
    assert not lifecycle.finish(job_id, 1, JobStatus.COMPLETED, result={"late": True})
    assert not lifecycle.finish(job_id, 1, JobStatus.FAILED, error="late")
    row = store.get_job(job_id)
    assert row.status == "cancelled" and row.result is None and row.error is None


def test_an_old_attempt_cannot_overwrite_a_newer_one(env):
    job_id = new_job()
    lifecycle.claim(job_id, 1, "w")
    lifecycle.finish(job_id, 1, JobStatus.FAILED, error="first")
    reopened, job = store.reopen(job_id, rq_job_id)
    assert reopened and job.status == "pending" and job.task_id == rq_job_id(job_id, 2)
    lifecycle.claim(job_id, 2, "w")
    assert not lifecycle.finish(job_id, 1, JobStatus.COMPLETED, result="stale")
    assert lifecycle.finish(job_id, 2, JobStatus.COMPLETED, result="fresh")
    assert store.get_job(job_id).result == "fresh"


def test_timestamps_are_timezone_aware_utc(env):
    job_id = new_job()
    lifecycle.claim(job_id, 1, "w")
    lifecycle.finish(job_id, 1, JobStatus.COMPLETED, result=None)
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


def test_a_row_read_back_is_the_job_validation_would_build(env):
    """Rows are turned into Jobs without validation: every field, type and value must still be what
    validating the same values gives, and the Job must behave like one built by hand."""
    job_id = new_job("read back")
    lifecycle.claim(job_id, 1, "w")
    lifecycle.finish(job_id, 1, JobStatus.FAILED, error="boom", progress={"done": 2, "total": 4})
    with store.get_engine().connect() as conn:
        row = conn.execute(sa.select(store.JOB).where(store.JOB.c.id == job_id)).one()
    fast, validated = store.row_to_job(row), Job.model_validate(dict(row._mapping))
    assert fast.model_dump() == validated.model_dump()
    assert {k: type(v) for k, v in vars(fast).items() if not k.startswith("_")} == {
        k: type(v) for k, v in vars(validated).items() if not k.startswith("_")
    }
    assert fast.to_public() == validated.to_public() and fast.job_status is JobStatus.FAILED
    fast.attempts = 5  # a plain object: changing it touches nothing stored
    assert store.get_job(job_id).attempts == 1


def test_list_query_uses_an_index_for_status_filter(env, backend):
    for _ in range(3):
        new_job()
    with store.get_engine().connect() as conn:
        if backend == "sqlite":
            plan = conn.exec_driver_sql(
                "EXPLAIN QUERY PLAN SELECT * FROM job WHERE status IN ('pending') ORDER BY id DESC LIMIT 100"
            ).all()
            assert "ix_job_status_list" in " ".join(str(r) for r in plan)
        else:
            conn.exec_driver_sql("SET enable_seqscan = off")
            plan = conn.exec_driver_sql(
                "EXPLAIN SELECT * FROM job WHERE status = 'pending' ORDER BY id DESC LIMIT 100"
            ).all()
            assert "ix_job_status_list" in " ".join(str(r) for r in plan)


@pytest.mark.skipif(not HAVE_POSTGRES, reason="PostgreSQL server not available")
@pytest.mark.parametrize("backend", ["postgres"])
def test_postgres_needs_db_upgrade_and_db_upgrade_creates_the_schema(run, backend):
    with postgres_database("jobctl_fresh") as name:
        url = postgres_database_url(name)
        out = run("list", DATABASE_URL=url)
        assert out.returncode == 4
        assert "has schema none, expected" in out.stderr and "jobctl db upgrade" in out.stderr
        out = run("db", "upgrade", DATABASE_URL=url)
        assert out.returncode == 0 and f"revision {schema.HEAD_REVISION}" in out.stderr
        assert run("db", "upgrade", DATABASE_URL=url).returncode == 0  # idempotent
        assert run("submit", "x", "-t", "noop", DATABASE_URL=url).returncode == 0
        engine = sa.create_engine(url.replace("postgresql://", "postgresql+psycopg2://"))
        with engine.connect() as conn:
            assert conn.exec_driver_sql("SELECT count(*) FROM job").scalar() == 1
        engine.dispose()


@pytest.mark.parametrize("backend", ["sqlite"])
def test_sqlite_creates_its_schema_on_first_use(run, tmp_path, backend):
    url = f"sqlite:///{tmp_path / 'fresh' / 'x.db'}"
    out = run("submit", "x", "-t", "noop", DATABASE_URL=url)
    assert out.returncode == 0, out.stderr
    assert (tmp_path / "fresh" / "x.db").exists()


def _store_rows(count: int) -> list[dict]:
    """Rows with every status, two tasks and queues, and creation times that are not in id order
    (clocks of submitting machines differ): each row as stored, with its id."""
    from datetime import UTC, datetime, timedelta

    now = datetime.now(UTC).replace(microsecond=0)
    statuses = ("completed", "failed", "pending", "cancelled", "processing", "completed", "failed")
    rows = []
    for i in range(count):
        hours = 2 * (count - i) + (7 if i % 5 == 0 else 0)  # every fifth row a little older than its id
        rows.append(
            {
                "name": f"{'Backup' if i % 3 else 'report'} {i}",
                "description": "",
                "task": ("a", "b")[i % 2],
                "args": {},
                "queue": ("q1", "q2", "q2")[i % 3],
                "status": statuses[i % len(statuses)],
                "attempts": 1,
                "retries": 0,
                "created_at": now - timedelta(hours=hours),
                "updated_at": now,
                "started_at": None if i % 4 == 0 else now - timedelta(seconds=i),
            }
        )
    with store.begin() as conn:
        ids = conn.execute(sa.insert(store.JOB).returning(store.JOB.c.id, sort_by_parameter_order=True), rows)
        for row, (job_id,) in zip(rows, ids, strict=True):
            row["id"] = job_id
    return rows


@pytest.mark.parametrize("window", [5, 100_000])  # SQLite's bound on short --since windows, or none
def test_list_pages_are_exactly_the_filtered_rows_newest_first(env, monkeypatch, window):
    from datetime import UTC, datetime, timedelta

    monkeypatch.setattr(listing, "SINCE_WINDOW", window)
    rows = _store_rows(40)
    now = datetime.now(UTC)
    cases = [
        {},
        {"statuses": ["failed"]},
        {"statuses": ["pending", "processing"]},
        {"statuses": ["failed", "completed", "failed"]},  # repeated: each row once
        {"statuses": ["cancelled", "pending"], "queue": "q2"},
        {"task": "a", "queue": "q1"},
        {"statuses": ["completed"], "task": "b"},
        {"since": now - timedelta(hours=13)},
        # the oldest of these rows is not the one with the lowest id
        {"since": now - timedelta(hours=17, minutes=30)},
        {"since": now - timedelta(hours=30), "statuses": ["failed", "completed"]},
        {"since": now - timedelta(hours=200)},
        {"since": now + timedelta(hours=1)},  # nothing that new
        {"name_like": "backup%", "statuses": ["completed"]},
    ]
    for case in cases:
        expected = [
            r["id"]
            for r in reversed(rows)
            if (not case.get("statuses") or r["status"] in case["statuses"])
            and case.get("task") in (None, r["task"])
            and case.get("queue") in (None, r["queue"])
            and ("since" not in case or r["created_at"] >= case["since"])
            and ("name_like" not in case or r["name"].lower().startswith("backup"))
        ]
        pages = [[j.id for j in listing.list_jobs(limit=4, offset=o, **case)] for o in range(0, 44, 4)]
        assert [i for page in pages for i in page] == expected, case
        assert all(len(page) == 4 for page in pages[: len(expected) // 4]), case


def test_list_sorts_put_missing_values_last_and_break_ties_newest_first(env):
    rows = _store_rows(12)

    def ids(order: list[tuple[str, bool]]) -> list[int]:
        return [j.id for j in listing.list_jobs(order=order, limit=100)]

    by_id = sorted(rows, key=lambda r: -r["id"])
    assert ids([("task", False)]) == [r["id"] for r in sorted(by_id, key=lambda r: r["task"])]
    assert ids([("queue", True)]) == [r["id"] for r in sorted(by_id, key=lambda r: r["queue"], reverse=True)]
    started = [r for r in by_id if r["started_at"] is not None]
    never = [r["id"] for r in by_id if r["started_at"] is None]
    assert (
        ids([("started", True)])
        == [r["id"] for r in sorted(started, key=lambda r: r["started_at"], reverse=True)] + never
    )
    assert (
        ids([("started", False)]) == [r["id"] for r in sorted(started, key=lambda r: r["started_at"])] + never
    )


def _engine(url: str) -> sa.Engine:
    return store.make_engine(url.replace("postgresql://", "postgresql+psycopg2://"))


def _install(url: str, revision: str) -> None:
    """The schema as an older jobctl left it: migrations up to `revision`."""
    from alembic import command
    from alembic.config import Config

    engine = _engine(url)
    cfg = Config()
    cfg.set_main_option("script_location", "jobctl:migrations")
    with engine.begin() as conn:
        cfg.attributes["connection"] = conn
        command.upgrade(cfg, revision)
    engine.dispose()


@pytest.fixture
def other_database(backend, tmp_path):
    """An empty database of the test's backend, besides the one `env` set up."""
    if backend == "sqlite":
        yield f"sqlite:///{tmp_path / 'old' / 'jobctl.db'}"
        return
    if not HAVE_POSTGRES:
        pytest.skip("PostgreSQL server not available")
    with postgres_database("jobctl_old") as name:
        yield postgres_database_url(name)


def test_a_0003_database_is_upgraded_to_the_list_indexes_and_keeps_its_jobs(run, backend, other_database):
    _install(other_database, "0003")
    engine = _engine(other_database)
    with engine.begin() as conn:
        for i, status in enumerate(("completed", "failed", "completed")):
            conn.execute(
                sa.insert(store.JOB).values(
                    name=f"old {i}",
                    task="noop",
                    args={},
                    queue="default",
                    status=status,
                    created_at=sa.func.current_timestamp(),
                    updated_at=sa.func.current_timestamp(),
                )
            )
    if backend == "postgres":
        out = run("list", DATABASE_URL=other_database)
        assert out.returncode == 4 and f"has schema 0003, expected {schema.HEAD_REVISION}" in out.stderr
        out = run("db", "upgrade", DATABASE_URL=other_database)
        assert out.returncode == 0 and f"revision {schema.HEAD_REVISION}" in out.stderr, out.stderr
    # SQLite upgrades itself on first use
    out = run("list", "-s", "completed", "-o", "ids", DATABASE_URL=other_database)
    assert out.returncode == 0, out.stderr
    assert out.stdout.split() == ["3", "1"]
    try:
        assert schema.current_revision(engine) == schema.HEAD_REVISION
        indexes = {i["name"]: i["column_names"] for i in sa.inspect(engine).get_indexes("job")}
        plan = prefix_plan = ""
        if backend == "postgres":
            with engine.connect() as conn:
                conn.exec_driver_sql(
                    "SET enable_seqscan = off"
                )  # three rows: show the indexes can serve them
                prefix = "EXPLAIN SELECT id FROM job WHERE lower(name) LIKE lower('OLD%%')"
                prefix_plan = "\n".join(r[0] for r in conn.exec_driver_sql(prefix))
                conn.exec_driver_sql("SET enable_indexonlyscan = off")  # the prefix index holds names too
                query = "EXPLAIN SELECT id FROM job WHERE name ILIKE '%%ld 1%%'"
                plan = "\n".join(r[0] for r in conn.exec_driver_sql(query))
        else:
            with engine.connect() as conn:
                query = "SELECT rowid FROM job_name_search WHERE name LIKE '%ld 1%'"
                plan = str(conn.exec_driver_sql(query).scalars().all())
    finally:
        engine.dispose()
    assert indexes["ix_job_status_list"] == ["status", "id", "task", "queue"]
    assert indexes["ix_job_created_at_id"] == ["created_at", "id"]
    assert not {"ix_job_status_id", "ix_job_task_id_order", "ix_job_queue_id"} & set(indexes)
    # 0005: `list --name` searches through a trigram index on PostgreSQL
    assert ("ix_job_name_trigram" in indexes) == (backend == "postgres")
    assert ("ix_job_name_prefix" in indexes) == (backend == "postgres")  # 0007
    if backend == "postgres":
        assert "ix_job_name_trigram" in plan, plan
        assert "ix_job_name_prefix" in prefix_plan and "Index Cond" in prefix_plan, prefix_plan
    else:  # 0006: on SQLite, a trigram full-text index holding the rows stored before it
        assert plan == "[2]", plan
    out = run("list", "--name", "*ld 1", "-o", "ids", DATABASE_URL=other_database)
    assert out.returncode == 0 and out.stdout.split() == ["2"], out.stderr


@pytest.mark.skipif(not HAVE_POSTGRES, reason="PostgreSQL server not available")
@pytest.mark.parametrize("backend", ["postgres"])
def test_without_the_right_to_create_pg_trgm_the_upgrade_goes_on_without_the_name_index(
    run, backend, other_database
):
    import psycopg2

    role = f"jobctl_plain_{uuid.uuid4().hex[:8]}"  # may create tables, not extensions
    admin = psycopg2.connect(POSTGRES_ADMIN_URL)
    admin.autocommit = True
    admin.cursor().execute(f'CREATE ROLE "{role}" LOGIN')
    in_db = psycopg2.connect(other_database)
    in_db.autocommit = True
    in_db.cursor().execute(f'GRANT ALL ON SCHEMA public TO "{role}"')
    url = other_database.replace("//postgres@", f"//{role}@", 1)
    try:
        out = run("db", "upgrade", DATABASE_URL=url)
        assert out.returncode == 0, out.stderr
        assert "no trigram index for `list --name`: cannot create the pg_trgm extension" in out.stderr
        assert f"revision {schema.HEAD_REVISION}" in out.stderr
        assert run("submit", "nightly backup", "-t", "noop", DATABASE_URL=url).returncode == 0
        found = run("list", "--name", "*BACKUP", "-o", "ids", DATABASE_URL=url)
        assert found.returncode == 0 and found.stdout.split() == ["1"], found.stderr
    finally:
        in_db.cursor().execute(f'DROP OWNED BY "{role}"')
        in_db.close()
        admin.cursor().execute(f'DROP ROLE "{role}"')
        admin.close()
