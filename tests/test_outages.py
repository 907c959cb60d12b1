"""Outages of our own private Redis and PostgreSQL servers: clean failures, no stranded rows, recovery."""

from __future__ import annotations

import json
import os
import time
import uuid

import pytest

from tests.conftest import reset_caches, show, submit, wait_for
from tests.servers import PostgresServer, RedisServer, postgres_available

SQLITE_ONLY = pytest.mark.parametrize("backend", ["sqlite"], indirect=True)
needs_postgres = pytest.mark.skipif(not postgres_available(), reason="initdb/pg_ctl not installed")


@pytest.fixture(scope="module")
def postgres_server():
    if not postgres_available():
        pytest.skip("initdb/pg_ctl not installed")
    server = PostgresServer(password="pg-Secret-9f3").start()
    yield server
    server.close()


@pytest.fixture
def private_postgres(env, postgres_server, monkeypatch):
    """A fresh database on a PostgreSQL server of this module's own, which tests may stop and start."""
    from jobctl import schema

    if not postgres_server.answers():
        postgres_server.start()
    url = postgres_server.create_database(f"outage_{uuid.uuid4().hex[:10]}")
    monkeypatch.setenv("DATABASE_URL", url)
    reset_caches()
    schema.upgrade_schema()
    yield postgres_server
    if not postgres_server.answers():
        postgres_server.start()


@pytest.fixture
def fast(env, monkeypatch):
    from jobctl.config import get_settings

    monkeypatch.setenv("JOBCTL_LOST_AFTER", "2")
    monkeypatch.setenv("JOBCTL_RECONCILE_INTERVAL", "0.5")
    get_settings.cache_clear()


def status_is(cli, job_id: int, *statuses: str):
    def check():
        job = show(cli, job_id)
        return job if job["status"] in statuses else None

    return check


def one_error_line(out, code: int = 4) -> str:
    assert out.exit_code == code, out
    assert out.stderr.startswith("Error: ") and out.stderr.count("\n") == 1, out.stderr
    assert "Traceback" not in out.stderr
    return out.stderr


# ---------------------------------------------------------------- Redis


@SQLITE_ONLY
def test_submit_with_redis_down_fails_and_strands_no_row(cli, private_redis):
    private_redis.stop()
    out = cli("submit", "nowhere", "-t", "noop")
    assert "cannot reach Redis" in one_error_line(out) and out.stdout == ""
    (row,) = json.loads(cli("list", "--json").stdout)
    assert row["status"] == "failed" and row["error"].startswith("could not be queued")


@SQLITE_ONLY
def test_workers_ride_out_a_redis_restart_that_loses_everything(cli, private_redis, fast, start_worker):
    worker = start_worker()
    running = submit(cli, "running", "-t", "sleep", "-a", "seconds=3", "-a", "steps=3")
    wait_for(status_is(cli, running, "processing"))
    waiting = submit(cli, "waiting", "-t", "noop")  # queued behind it
    private_redis.restart(down_for=2)  # no persistence: queue, heartbeats and registrations are gone
    assert wait_for(status_is(cli, running, "completed"), 30)["result"] == {"slept": 3}
    # the queued job vanished with Redis; reconciliation puts it back and the worker runs it
    assert wait_for(status_is(cli, waiting, "completed"), 40)
    after = submit(cli, "after", "-t", "noop")
    assert wait_for(status_is(cli, after, "completed"), 30)
    assert worker.proc.poll() is None
    assert "Redis is back" in worker.output() or "could not connect to Redis" in worker.output()
    workers = cli("workers")
    assert str(worker.pid) in workers.stdout  # registered again


@SQLITE_ONLY
def test_queued_jobs_survive_a_restart_of_a_persistent_redis(env, cli, monkeypatch, start_worker):
    server = RedisServer(persistent=True).start()
    try:
        monkeypatch.setenv("REDIS_URL", server.url)
        reset_caches()
        ids = [submit(cli, f"kept {i}", "-t", "noop") for i in range(3)]
        server.restart(down_for=0.5)
        reset_caches()
        start_worker("--burst").proc.wait(60)
        assert [show(cli, i)["status"] for i in ids] == ["completed"] * 3
    finally:
        server.close()


@SQLITE_ONLY
def test_a_worker_started_while_redis_is_down_fails_cleanly(run, private_redis):
    private_redis.stop()
    out = run("worker", "--burst")
    assert out.returncode == 4 and out.stderr.startswith("Error: cannot reach Redis"), out.stderr
    assert "Traceback" not in out.stderr + out.stdout


# ---------------------------------------------------------------- database


@SQLITE_ONLY
@needs_postgres
def test_submit_and_list_with_the_database_down_fail_cleanly(cli, private_postgres):
    private_postgres.stop()
    for args in (["submit", "x", "-t", "noop"], ["list"], ["show", "1"], ["cancel", "1"]):
        out = cli(*args)
        line = one_error_line(out)
        assert "cannot reach the database" in line and "***" in line, line
        assert private_postgres.password not in out.stdout + out.stderr
    private_postgres.start()
    assert cli("list", "--json").stdout.strip() == "[]"  # nothing half-stored


@SQLITE_ONLY
@needs_postgres
def test_a_database_outage_while_jobs_run_leaves_rows_right(cli, private_postgres, fast, start_worker):
    from jobctl import queue, store

    start_worker("-c", "2")
    finishing = submit(cli, "finishes during the outage", "-t", "sleep", "-a", "seconds=2")
    wait_for(status_is(cli, finishing, "processing"))
    # stored but not yet queued when the database goes away: its claim will fail
    (claiming,) = store.insert_jobs(
        [{"name": "claims during the outage", "task": "noop", "args": {}, "queue": "default"}],
        lambda i: queue.rq_job_id(i, 1),
    )
    private_postgres.stop()
    queue.enqueue([claiming])
    time.sleep(4)  # the first job ends now and retries its final write; the second fails to claim
    private_postgres.start()
    store.reset_engines()
    done = wait_for(status_is(cli, finishing, "completed"), 30)
    assert done["result"] == {"slept": 2} and done["attempts"] == 1
    again = wait_for(status_is(cli, claiming.id, "completed"), 40)
    assert again["attempts"] == 1


@SQLITE_ONLY
@needs_postgres
def test_health_reports_a_database_outage(cli, private_postgres):
    private_postgres.stop()
    out = cli("health", "--timeout", "1")
    assert out.exit_code == 4 and "FAIL" in out.stdout
    assert private_postgres.password not in out.stdout + out.stderr
    assert os.environ["DATABASE_URL"] not in out.stdout
