"""Reconciliation: stranded pending rows are queued again, lost and ended attempts are recorded."""

from __future__ import annotations

import json
import os
import signal
import time
from concurrent.futures import ThreadPoolExecutor

import pytest
import redis

from tests.conftest import LOCK_KEY, submit, wait_for

SQLITE_ONLY = pytest.mark.parametrize("backend", ["sqlite"], indirect=True)


@pytest.fixture
def fast(env, monkeypatch):
    """Short liveness settings for this process and the workers it starts."""
    from jobctl.config import get_settings

    def _set(lost_after: float = 2.0, interval: float = 0.5) -> None:
        monkeypatch.setenv("JOBCTL_LOST_AFTER", str(lost_after))
        monkeypatch.setenv("JOBCTL_RECONCILE_INTERVAL", str(interval))
        get_settings.cache_clear()

    _set()
    return _set


@pytest.fixture
def conn(env):
    client = redis.Redis.from_url(env["REDIS_URL"])
    yield client
    client.close()


def row(job_id: int):
    from jobctl import store

    return store.get_job(job_id)


def age_rows(seconds: float = 60) -> None:
    """Make every row look as if it was stored and claimed `seconds` ago."""
    import sqlalchemy as sa

    from jobctl import store
    from jobctl.models import utcnow

    past = utcnow() - __import__("datetime").timedelta(seconds=seconds)
    with store.begin() as c:
        c.execute(sa.update(store.JOB).values(updated_at=past, created_at=past))
        c.execute(sa.update(store.JOB).where(store.JOB.c.started_at.isnot(None)).values(started_at=past))


def old_redis(conn) -> None:
    """Make this Redis look like it has held jobctl's state for a long time (heartbeats are trusted)."""
    conn.set("jobctl:epoch", repr(time.time() - 3600))


def forget_redis(conn) -> None:
    """What a Redis restart without persistence does to jobctl's keys (this test's own database only)."""
    for key in conn.scan_iter("*"):
        if key != LOCK_KEY.encode():
            conn.delete(key)


def queued(conn, name: str = "default") -> list[str]:
    return [x.decode() for x in conn.lrange(f"rq:queue:{name}", 0, -1)]


def horse_pid(conn, job_id: int, attempt: int = 1) -> int:
    raw = wait_for(lambda: conn.get(f"jobctl:alive:job:jobctl-{job_id}-{attempt}"))
    return int(json.loads(raw)["pid"])


def status_is(job_id: int, *statuses: str):
    def check():
        current = row(job_id)
        return current if current is not None and current.status in statuses else None

    return check


# ---------------------------------------------------------------- pending rows


def test_pending_row_lost_by_redis_is_queued_again_exactly_once(cli, conn, fast, start_worker):
    from jobctl.reconcile import run_pass

    ids = [submit(cli, f"j{i}", "-t", "noop") for i in range(3)]
    forget_redis(conn)
    assert queued(conn) == []
    assert run_pass().requeued == []  # just stored: the submitter may still be enqueueing them
    age_rows()
    report = run_pass()
    assert sorted(report.requeued) == ids
    assert run_pass().requeued == [] and run_pass().requeued == []
    assert sorted(queued(conn)) == sorted(f"jobctl-{i}-1" for i in ids)
    start_worker("--burst").proc.wait(30)
    assert [row(i).status for i in ids] == ["completed"] * 3


def test_pending_row_taken_by_a_worker_that_died_is_queued_again(cli, conn, fast):
    from rq import Queue

    from jobctl import queue
    from jobctl.reconcile import run_pass

    job_id = submit(cli, "popped", "-t", "noop")
    rq_queue = Queue("default", connection=queue.get_redis(), serializer=queue.serializer())
    popped = Queue.dequeue_any([rq_queue], None, connection=queue.get_redis(), serializer=rq_queue.serializer)
    assert popped is not None
    rq_job, _ = popped
    rq_job.set_status("started")
    conn.hset(rq_job.key, "worker_name", "ghost")  # a worker that never beat and is not registered
    age_rows()
    old_redis(conn)
    assert run_pass().requeued == [job_id]
    assert queued(conn) == [f"jobctl-{job_id}-1"]


def test_a_row_claimed_by_a_worker_that_died_before_starting_it_leaves_nothing_in_rq(cli, conn, fast):
    """Found by bench/chaos.py: a worker claims the row before it forks; killed in between, the RQ job
    is still popped and `queued`, and must not stay so once the row records the loss."""
    from rq import Queue

    from jobctl import lifecycle, queue
    from jobctl.reconcile import run_pass

    job_id = submit(cli, "claimed, never started", "-t", "noop")
    rq_queue = Queue("default", connection=queue.get_redis(), serializer=queue.serializer())
    assert Queue.dequeue_any([rq_queue], None, connection=queue.get_redis(), serializer=rq_queue.serializer)
    assert lifecycle.claim(job_id, 1, "gone") is not None
    rq_id = f"jobctl-{job_id}-1"
    assert conn.hget(f"rq:job:{rq_id}", "status") == b"queued"
    age_rows()
    old_redis(conn)
    assert run_pass().lost == [job_id]
    assert row(job_id).status == "failed"
    assert conn.hget(f"rq:job:{rq_id}", "status") == b"failed"  # RQ agrees
    assert queue.waiting("default").popped == set() and queued(conn) == []
    assert conn.zscore("rq:failed:default", rq_id) is not None


def test_a_popped_attempt_of_a_row_cancelled_since_is_closed(cli, conn, fast):
    from rq import Queue

    from jobctl import lifecycle, queue
    from jobctl.reconcile import run_pass

    job_id = submit(cli, "claimed, then cancelled", "-t", "noop")
    rq_queue = Queue("default", connection=queue.get_redis(), serializer=queue.serializer())
    assert Queue.dequeue_any([rq_queue], None, connection=queue.get_redis(), serializer=rq_queue.serializer)
    assert lifecycle.claim(job_id, 1, "gone") is not None
    assert cli("cancel", str(job_id)).exit_code == 0
    rq_id = f"jobctl-{job_id}-1"
    assert run_pass().tidied == []  # cancelled a moment ago: its worker may still be about to close it
    assert queue.waiting("default").popped == {rq_id}
    age_rows()
    assert run_pass().tidied == [rq_id]
    assert queue.waiting("default").popped == set()
    assert conn.hget(f"rq:job:{rq_id}", "status") == b"failed"
    assert row(job_id).status == "cancelled" and run_pass().tidied == []


def test_a_submit_that_could_not_reach_the_database_twice_is_queued_later(cli, conn, fast):
    """The submitter stored the row, Redis refused the enqueue and the database refused marking it."""
    from jobctl import queue, service, store
    from jobctl.errors import BackendError
    from jobctl.reconcile import run_pass

    def refuse(*args, **kwargs):
        raise BackendError("down")

    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(queue, "enqueue", refuse)
        patch.setattr(store, "fail_unqueued", refuse)
        with pytest.raises(BackendError):
            service.submit_jobs([service.JobRequest(name="stranded", task="noop")])
    (stranded,) = store.active_jobs()
    assert stranded.status == "pending" and queued(conn) == []
    age_rows()
    assert run_pass().requeued == [stranded.id]


# ---------------------------------------------------------------- processing rows


@SQLITE_ONLY
def test_a_killed_worker_and_its_job_are_found_at_once_on_the_same_host(cli, conn, fast, start_worker):
    from jobctl.reconcile import run_pass

    victim = start_worker()
    job_id = submit(cli, "victim", "-t", "sleep", "-a", "seconds=60")
    wait_for(status_is(job_id, "processing"))
    pid = horse_pid(conn, job_id)
    # Machine loss: the worker and its scheduler, then the work-horse (in that order, so the worker
    # cannot see its horse die and record it).
    os.killpg(victim.pid, signal.SIGKILL)
    os.kill(pid, signal.SIGKILL)
    victim.proc.wait(10)
    old_redis(conn)
    wait_for(lambda: run_pass().lost == [job_id], 10)
    failed = row(job_id)
    assert failed.status == "failed" and failed.error.startswith("worker lost")
    assert conn.hget(f"rq:job:jobctl-{job_id}-1", "status") == b"failed"  # RQ agrees


def test_a_worker_lost_elsewhere_is_found_after_heartbeats_expire(cli, conn, fast, start_worker, monkeypatch):
    from jobctl import liveness
    from jobctl.reconcile import run_pass

    victim = start_worker()
    job_id = submit(cli, "far away", "-t", "sleep", "-a", "seconds=60", "--retries", "1")
    wait_for(status_is(job_id, "processing"))
    pid = horse_pid(conn, job_id)
    # Seen from another host, a process id means nothing: only the heartbeats tell.
    monkeypatch.setattr(liveness, "host_identity", lambda: "another-host")
    old_redis(conn)
    assert run_pass().lost == []  # alive: its heartbeats are fresh
    os.killpg(victim.pid, signal.SIGKILL)  # the worker and its scheduler, then its work-horse
    os.kill(pid, signal.SIGKILL)
    victim.proc.wait(10)
    killed_at = time.monotonic()
    assert run_pass().lost == []  # heartbeats not expired yet
    wait_for(lambda: run_pass().lost == [job_id], 15)
    assert time.monotonic() - killed_at >= 1.0  # it waited for the heartbeats to expire
    retried = row(job_id)
    assert retried.status == "pending" and retried.attempts == 1 and retried.error.startswith("worker lost")
    assert queued(conn) == [f"jobctl-{job_id}-2"]


@SQLITE_ONLY
def test_workers_reconcile_periodically_and_retry_a_lost_job(cli, conn, fast, start_worker):
    victim = start_worker()
    job_id = submit(cli, "lost", "-t", "sleep", "-a", "seconds=2", "--retries", "1")
    wait_for(status_is(job_id, "processing"))
    pid = horse_pid(conn, job_id)
    # The worker first (with its scheduler), so it cannot see its horse die, queue the next attempt and
    # take it itself before it is killed too.
    os.killpg(victim.pid, signal.SIGKILL)
    os.kill(pid, signal.SIGKILL)
    victim.proc.wait(10)
    start_worker()  # its own reconciliation finds the lost attempt and runs the next one
    done = wait_for(status_is(job_id, "completed"), 40)
    assert done.attempts == 2


def test_a_killed_work_horse_fails_its_job_at_once(cli, conn, fast, start_worker):
    fast(lost_after=60, interval=60)  # no reconciliation: the worker itself records the death
    start_worker()
    job_id = submit(cli, "oom", "-t", "sleep", "-a", "seconds=60")
    wait_for(status_is(job_id, "processing"))
    os.kill(horse_pid(conn, job_id), signal.SIGKILL)
    failed = wait_for(status_is(job_id, "failed"), 10)
    assert "killed by SIGKILL" in failed.error


def test_an_orphaned_work_horse_finishes_and_its_outcome_is_kept(cli, conn, fast, start_worker):
    from jobctl.reconcile import run_pass

    victim = start_worker()
    job_id = submit(cli, "orphan", "-t", "sleep", "-a", "seconds=4", "-a", "steps=4")
    wait_for(status_is(job_id, "processing"))
    horse_pid(conn, job_id)
    os.killpg(victim.pid, signal.SIGKILL)  # the worker dies; its horse (a process group of its own) runs on
    victim.proc.wait(10)
    old_redis(conn)
    deadline = time.monotonic() + 20
    while row(job_id).status == "processing" and time.monotonic() < deadline:
        assert run_pass().lost == []  # its own heartbeat says it is alive
        time.sleep(0.3)
    done = row(job_id)
    assert done.status == "completed" and done.result == {"slept": 4}
    assert done.worker == conn.hget(f"rq:job:jobctl-{job_id}-1", "worker_name").decode()


def test_no_heartbeat_right_after_redis_lost_its_data_is_not_proof(cli, conn, fast):
    from jobctl import lifecycle
    from jobctl.reconcile import run_pass

    job_id = submit(cli, "running elsewhere", "-t", "noop")
    assert lifecycle.claim(job_id, 1, "some-worker") is not None
    age_rows()
    forget_redis(conn)  # heartbeats gone with everything else: Redis restarted without persistence
    assert run_pass().lost == []
    time.sleep(2.2)  # JOBCTL_LOST_AFTER: heartbeats had time to come back, and did not
    assert run_pass().lost == [job_id]
    assert "stopped responding" in row(job_id).error


# ---------------------------------------------------------------- attempts whose RQ job ended


def _ended_in_rq(job_id: int, *, result=None, exc: str | None = None, just_now: bool = False) -> None:
    """A claimed attempt that RQ saw end while the database did not get the outcome (long ago, unless
    `just_now`)."""
    from rq.job import Job as RQJob
    from rq.results import Result

    from jobctl import lifecycle, queue

    rq_job = RQJob.fetch(f"jobctl-{job_id}-1", connection=queue.get_redis(), serializer=queue.serializer())
    assert lifecycle.claim(job_id, 1, "w1") is not None
    rq_job.worker_name = "w1"
    if exc is None:
        rq_job.set_status("finished")
        Result.create(rq_job, Result.Type.SUCCESSFUL, ttl=600, return_value=result)
    else:
        rq_job.set_status("failed")
        Result.create_failure(rq_job, ttl=600, exc_string=exc)
    rq_job.meta["progress"] = {"current": 3, "total": 3, "message": "done"}
    if just_now:
        from rq.utils import now

        rq_job.ended_at = now()
    rq_job.save()


def test_an_attempt_that_rq_finished_is_recorded_with_its_result(cli, conn, fast):
    from jobctl.reconcile import run_pass

    job_id = submit(cli, "finished", "-t", "noop")
    _ended_in_rq(job_id, result={"answer": 42})
    assert run_pass().finalized == [job_id]
    done = row(job_id)
    assert done.status == "completed" and done.result == {"answer": 42}
    assert done.progress == {"current": 3, "total": 3, "message": "done"}
    assert run_pass().finalized == []


def test_an_attempt_that_just_ended_is_left_to_its_worker_for_a_while(cli, conn, fast):
    from jobctl.reconcile import run_pass

    job_id = submit(cli, "just finished", "-t", "noop")
    _ended_in_rq(job_id, result="mine", just_now=True)
    assert run_pass().changed == 0  # its worker is about to record it, with what it knows
    assert row(job_id).status == "processing"
    time.sleep(2.2)  # JOBCTL_LOST_AFTER: nobody did
    assert run_pass().finalized == [job_id]
    assert row(job_id).result == "mine"


def test_an_attempt_that_rq_failed_is_failed_or_retried(cli, conn, fast):
    from jobctl.reconcile import run_pass

    exc = 'Traceback (most recent call last):\n  File "x.py", line 1\nValueError: boom\n'
    failing = submit(cli, "failing", "-t", "noop")
    retrying = submit(cli, "retrying", "-t", "noop", "--retries", "2")
    _ended_in_rq(failing, exc=exc)
    _ended_in_rq(retrying, exc=exc)
    assert sorted(run_pass().finalized) == [failing, retrying]
    failed = row(failing)
    assert failed.status == "failed" and failed.error.startswith("ValueError: boom\n\nTraceback")
    again = row(retrying)
    assert again.status == "pending" and again.attempts == 1 and again.task_id == f"jobctl-{retrying}-2"
    assert f"jobctl-{retrying}-2" in queued(conn)


# ---------------------------------------------------------------- safety


def test_late_writes_never_overwrite_a_terminal_state_or_a_newer_attempt(cli, fast):
    from jobctl import lifecycle
    from jobctl.models import JobStatus
    from jobctl.reconcile import settle_failure

    job_id = submit(cli, "fenced", "-t", "noop", "--retries", "1")
    first = lifecycle.claim(job_id, 1, "old-worker")
    assert first is not None
    assert settle_failure(first, 1, "worker lost: test") == "retried"
    assert lifecycle.claim(job_id, 2, "new-worker") is not None
    # the first attempt's process was not dead after all and reports late
    assert not lifecycle.finish(job_id, 1, JobStatus.COMPLETED, result="stale")
    assert not lifecycle.requeue_after_failure(job_id, 1, error="stale", progress=None, task_id="x")
    assert lifecycle.finish(job_id, 2, JobStatus.COMPLETED, result="fresh")
    assert not lifecycle.finish(job_id, 2, JobStatus.FAILED, error="late")  # terminal states are sticky
    done = row(job_id)
    assert (done.status, done.result, done.attempts, done.worker) == ("completed", "fresh", 2, "new-worker")


def test_concurrent_passes_queue_each_stranded_row_once(cli, conn, fast):
    from jobctl.reconcile import run_pass

    ids = [submit(cli, f"s{i}", "-t", "noop") for i in range(20)]
    forget_redis(conn)
    age_rows()
    with ThreadPoolExecutor(8) as pool:
        reports = list(pool.map(lambda _: run_pass(), range(16)))
    requeued = [i for r in reports for i in r.requeued]
    assert sorted(requeued) == ids
    assert sorted(queued(conn)) == sorted(f"jobctl-{i}-1" for i in ids)


def test_health_runs_a_reconciliation_pass(cli, conn, fast, start_worker):
    fast(lost_after=60, interval=3600)  # the worker's own passes would come first
    job_id = submit(cli, "stranded", "-t", "noop")
    forget_redis(conn)
    age_rows()
    start_worker()
    out = cli("health", "--timeout", "20")
    assert out.exit_code == 0, out
    assert "reconcile" in out.stdout and "requeued 1" in out.stdout
    wait_for(status_is(job_id, "completed"), 20)


def test_rq_entries_left_started_by_a_killed_process_are_closed(cli, conn, fast):
    from jobctl import lifecycle
    from jobctl.models import JobStatus
    from jobctl.reconcile import run_pass

    done_id = submit(cli, "recorded, then killed", "-t", "noop")
    old_id = submit(cli, "superseded attempt", "-t", "noop", "--retries", "1")
    for job_id in (done_id, old_id):
        assert lifecycle.claim(job_id, 1, "gone") is not None
        rq_id = f"jobctl-{job_id}-1"
        conn.hset(f"rq:job:{rq_id}", mapping={"status": "started", "worker_name": "gone"})
        conn.zadd("rq:wip:default", {f"{rq_id}:execution": time.time() + 3600})
    assert lifecycle.finish(done_id, 1, JobStatus.COMPLETED, result=1)
    assert lifecycle.requeue_after_failure(old_id, 1, error="x", progress=None, task_id=f"jobctl-{old_id}-2")
    assert run_pass().tidied == []  # recorded a moment ago: its process may still be closing it
    age_rows()
    assert sorted(run_pass().tidied) == sorted([f"jobctl-{done_id}-1", f"jobctl-{old_id}-1"])
    assert conn.zrange("rq:wip:default", 0, -1) == []
    assert conn.hget(f"rq:job:jobctl-{done_id}-1", "status") == b"finished"
    assert conn.hget(f"rq:job:jobctl-{old_id}-1", "status") == b"failed"
    assert run_pass().tidied == []


def test_a_cancel_racing_a_claim_knows_it_must_stop_a_running_job(cli, fast):
    """Found by bench/chaos.py: a claim committed between cancel's read and its update."""
    import threading

    import sqlalchemy as sa

    from jobctl import store

    job_id = submit(cli, "raced", "-t", "noop")
    outcome: list = []
    from jobctl.config import get_settings

    engine = store.make_engine(get_settings().resolved_database_url())
    with engine.connect() as other:
        other.execution_options(immediate=True)
        with other.begin():  # a worker's claim, not yet committed
            other.execute(
                sa.update(store.JOB).where(store.JOB.c.id == job_id).values(status="processing", attempts=1)
            )
            racer = threading.Thread(target=lambda: outcome.append(store.cancel(job_id)))
            racer.start()
            time.sleep(0.5)
    racer.join(30)
    engine.dispose()
    before, job = outcome[0]
    assert before.value == "processing" and job.status == "cancelled"
