"""The job loop end to end on real workers: submit, list, show, cancel, retry, timeouts, retries."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time

import pytest

from tests.conftest import RQ_SCRIPT, show, stop_cold, submit, wait_for


def status_is(cli, job_id: int, *statuses: str):
    def check():
        job = show(cli, job_id)
        return job if job["status"] in statuses else None

    return check


def test_submit_runs_to_completion_with_progress_and_result(run, cli, start_worker):
    start_worker()
    out = run("submit", "Test Job", "-d", "Testing", "-t", "sleep", "-a", "seconds=0.3", "-a", "steps=3")
    assert out.returncode == 0, out.stderr
    job_id = int(out.stdout)
    done = wait_for(status_is(cli, job_id, "completed"), 30)
    assert done["progress"] == {"current": 3, "total": 3, "message": "slept 3"}
    assert done["result"] == {"slept": 0.3}
    assert done["description"] == "Testing"
    assert done["attempts"] == 1 and done["worker"]
    assert done["started_at"] <= done["completed_at"]
    assert done["completed_at"].endswith("+00:00")
    listed = json.loads(cli("list", "--status", "completed", "--json").stdout)
    assert [j["id"] for j in listed] == [job_id]
    table = run("list").stdout
    assert "Test Job" in table and "completed" in table and "3/3" in table


def test_results_of_any_size_are_recorded_whole_by_a_forking_worker(cli, start_worker):
    # A small result travels from the work-horse to its worker, which records it; one too large for
    # that is recorded by the work-horse itself. Either way the row holds all of it.
    start_worker()
    echo = ("-t", "tests.sample_tasks.echo")
    small = submit(cli, "small", *echo, "-a", "text=é\u2028x", "-a", "times=3")
    large = submit(cli, "large", *echo, "-a", "text=0123456789", "-a", "times=150000")
    failing = submit(cli, "failing", "-t", "boom", "-a", "message=" + "y" * 50_000)
    assert wait_for(status_is(cli, small, "completed"), 30)["result"] == "é\u2028x" * 3
    assert wait_for(status_is(cli, large, "completed"), 30)["result"] == "0123456789" * 150000
    failed = wait_for(status_is(cli, failing, "failed"), 30)
    assert "y" * 50_000 in failed["error"]


def test_show_reports_live_progress_while_running(cli, start_worker):
    start_worker()
    job_id = submit(cli, "slow", "-t", "sleep", "-a", "seconds=6", "-a", "steps=60")
    running = wait_for(lambda: (j := show(cli, job_id))["progress"] and j["progress"]["current"] >= 2 and j)
    assert running["status"] == "processing"
    assert running["progress"]["total"] == 60
    text = cli("show", str(job_id)).stdout
    assert "processing" in text and "/60" in text and "rq state" in text
    assert cli("cancel", str(job_id)).exit_code == 0


def test_failed_job_keeps_error_and_last_progress(cli, start_worker):
    start_worker()
    job_id = submit(
        cli,
        "doomed",
        "-a",
        "steps=3",
        "-a",
        "min_delay=0",
        "-a",
        "max_delay=0",
        "-a",
        "failure_rate=1",
        "-a",
        "seed=1",
    )
    failed = wait_for(status_is(cli, job_id, "failed"), 30)
    assert failed["error"].splitlines()[0] == "RuntimeError: Random processing error"
    assert failed["completed_at"] and failed["result"] is None
    text = cli("show", str(job_id)).stdout
    assert "Random processing error" in text


def test_cancel_running_job_stops_it(cli, start_worker, redis_url):
    import redis

    start_worker()
    job_id = submit(cli, "long", "-t", "sleep", "-a", "seconds=30", "-a", "steps=300")
    wait_for(status_is(cli, job_id, "processing"))
    out = cli("cancel", str(job_id))
    assert out.exit_code == 0, out
    assert f"cancelled job {job_id}" in out.stderr
    assert show(cli, job_id)["status"] == "cancelled"
    # The work-horse is stopped: RQ sees the attempt end, and the worker is free for new work.
    conn = redis.Redis.from_url(redis_url)
    wait_for(lambda: conn.hget(f"rq:job:jobctl-{job_id}-1", "status") in (b"failed", b"stopped"), 2.5)
    follow = submit(cli, "next", "-t", "noop")
    wait_for(status_is(cli, follow, "completed"), 15)
    assert show(cli, job_id)["status"] == "cancelled"


def test_cancel_kills_a_task_that_ignores_sigterm(cli, start_worker, redis_url):
    import redis

    start_worker()
    job_id = submit(cli, "stubborn", "-t", "stubborn", "-a", "seconds=60")
    wait_for(status_is(cli, job_id, "processing"))
    assert cli("cancel", str(job_id)).exit_code == 0
    conn = redis.Redis.from_url(redis_url)
    wait_for(lambda: conn.hget(f"rq:job:jobctl-{job_id}-1", "status") in (b"failed", b"stopped"), 5)
    final = show(cli, job_id)
    assert final["status"] == "cancelled"
    assert final["error"] is None  # the killed process did not overwrite the cancel


def test_cancelled_pending_job_never_starts(cli, start_worker):
    job_id = submit(cli, "never", "-t", "noop")
    other = submit(cli, "runs", "-t", "noop")
    out = cli("cancel", str(job_id))
    assert out.exit_code == 0 and "was pending" in out.stderr
    worker = start_worker("--burst")
    assert worker.proc.wait(30) == 0
    assert show(cli, other)["status"] == "completed"
    never = show(cli, job_id)
    assert never["status"] == "cancelled"
    assert never["started_at"] is None and never["attempts"] == 0 and never["worker"] is None


def test_cancel_after_a_worker_dequeued_the_job_still_wins(env, cli):
    """RQ can start a job cancelled just after dequeue (rq#2160): the row's claim must refuse it."""
    from rq import Queue

    from jobctl import queue, runtime

    job_id = submit(cli, "raced", "-t", "tests.sample_tasks.echo", "-a", "text=x")
    rq_queue = Queue("default", connection=queue.get_redis(), serializer=queue.serializer())
    dequeued = rq_queue.dequeue_any(
        [rq_queue], timeout=None, connection=queue.get_redis(), serializer=queue.serializer()
    )
    assert dequeued is not None and dequeued[0].id == f"jobctl-{job_id}-1"
    assert cli("cancel", str(job_id)).exit_code == 0
    assert runtime.run_job(job_id, 1) is None  # what the worker would now execute
    raced = show(cli, job_id)
    assert raced["status"] == "cancelled" and raced["started_at"] is None and raced["result"] is None


def test_cancel_of_a_job_a_worker_is_ending_at_that_moment(env, cli):
    """Found in CI: a worker took the RQ job just before its row was cancelled, and deleted the execution
    record as RQ's cancel read it; `cancel` printed a traceback."""
    import redis

    job_id = submit(cli, "taken", "-t", "noop")
    conn = redis.Redis.from_url(env["REDIS_URL"])
    rq_id = f"jobctl-{job_id}-1"
    conn.hset(f"rq:job:{rq_id}", "status", "started")
    conn.zadd(f"rq:executions:{rq_id}", {"gone": time.time() + 3600})  # its record already deleted
    out = cli("cancel", str(job_id))
    assert out.exit_code == 0 and out.stderr.strip() == f"cancelled job {job_id} (was pending)", out
    assert show(cli, job_id)["status"] == "cancelled"


def test_cancel_storm_while_workers_dequeue(cli, start_worker):
    ids = [
        int(i)
        for i in cli(
            "submit",
            "--from",
            "-",
            input="\n".join(
                json.dumps({"name": f"j{i}", "task": "sleep", "args": {"seconds": 0.05}}) for i in range(40)
            ),
        ).stdout.split()
    ]
    start_worker("-c", "2")
    outcomes = {}
    for job_id in ids[::2]:
        out = cli("cancel", str(job_id))
        outcomes[job_id] = out
    wait_for(lambda: all(show(cli, i)["status"] in ("completed", "failed", "cancelled") for i in ids), 60)
    for job_id, out in outcomes.items():
        job = show(cli, job_id)
        if out.exit_code == 0:
            assert job["status"] == "cancelled", job
            if "was pending" in out.stderr:
                assert job["started_at"] is None, job
        else:
            assert out.exit_code == 1 and job["status"] == "completed"
    for job_id in ids[1::2]:
        assert show(cli, job_id)["status"] == "completed"


def test_cancel_refuses_terminal_and_unknown_jobs_with_worst_exit_code(cli, start_worker):
    start_worker()
    done = submit(cli, "quick", "-t", "noop")
    wait_for(status_is(cli, done, "completed"))
    out = cli("cancel", str(done))
    assert out.exit_code == 1
    assert out.stderr.strip() == f"Error: cannot cancel job {done}: it is completed"
    pending = submit(cli, "p", "-t", "sleep", "-a", "seconds=5")
    out = cli("cancel", str(done), "999", str(pending))
    assert out.exit_code == 3
    assert "Error: job 999 not found" in out.stderr
    assert f"Error: cannot cancel job {done}: it is completed" in out.stderr
    assert show(cli, pending)["status"] == "cancelled"


def test_retry_failed_job_runs_a_new_attempt(cli, start_worker):
    start_worker()
    job_id = submit(cli, "fails", "-t", "boom", "-a", "message=first")
    wait_for(status_is(cli, job_id, "failed"))
    out = cli("retry", str(job_id))
    assert out.exit_code == 0 and "attempt 2" in out.stderr
    again = wait_for(status_is(cli, job_id, "failed"))
    assert again["attempts"] == 2 and again["task_id"] == f"jobctl-{job_id}-2"
    done = submit(cli, "ok", "-t", "noop")
    wait_for(status_is(cli, done, "completed"))
    refused = cli("retry", str(done))
    assert refused.exit_code == 1
    assert refused.stderr.strip() == f"Error: cannot retry job {done}: it is completed"
    assert cli("retry", "424242").exit_code == 3


def test_retry_cancelled_job_completes(cli, start_worker):
    job_id = submit(cli, "later", "-t", "tests.sample_tasks.echo", "-a", "text=hi", "-a", "times=2")
    assert cli("cancel", str(job_id)).exit_code == 0
    assert cli("retry", str(job_id)).exit_code == 0
    start_worker()
    done = wait_for(status_is(cli, job_id, "completed"))
    assert done["result"] == "hihi" and done["attempts"] == 1


def test_retries_option_runs_failed_attempts_again(cli, start_worker):
    start_worker()
    job_id = submit(cli, "flaky", "-t", "boom", "--retries", "2")
    failed = wait_for(status_is(cli, job_id, "failed"), 30)
    assert failed["attempts"] == 3 and failed["retries"] == 2
    assert failed["error"].startswith("ValueError: boom")


def test_timeout_fails_the_job_with_reason(cli, start_worker):
    start_worker()
    job_id = submit(cli, "too slow", "-t", "sleep", "-a", "seconds=20", "--timeout", "1")
    failed = wait_for(status_is(cli, job_id, "failed"), 30)
    assert failed["error"].startswith("timed out")


def test_plain_rq_worker_with_json_serializer_runs_and_records_jobs(cli, env, tmp_path):
    job_id = submit(cli, "plain rq", "-t", "sleep", "-a", "seconds=0.2", "-a", "steps=2")
    proc = subprocess.run(
        [
            RQ_SCRIPT,
            "worker",
            "-u",
            env["REDIS_URL"],
            "-S",
            "rq.serializers.JSONSerializer",
            "--burst",
            "default",
        ],
        capture_output=True,
        text=True,
        timeout=60,
        env=env,
    )
    assert proc.returncode == 0, proc.stderr
    done = show(cli, job_id)
    assert done["status"] == "completed", done
    assert done["progress"] == {"current": 2, "total": 2, "message": "slept 2"}
    assert done["result"] == {"slept": 0.2} and done["worker"]


def test_worker_refuses_functions_other_than_the_dispatcher(env, cli, start_worker, tmp_path):
    from rq import Queue

    from jobctl import queue

    marker = tmp_path / "ran"
    rq_queue = Queue("default", connection=queue.get_redis(), serializer=queue.serializer())
    foreign = rq_queue.enqueue("pathlib.Path.touch", str(marker))
    worker = start_worker("--burst")
    assert worker.proc.wait(30) == 0
    assert not marker.exists()
    assert foreign.get_status(refresh=True) == "failed"


@pytest.mark.parametrize("backend", ["sqlite"], indirect=True)
def test_a_worker_writes_its_state_and_heartbeat_to_redis_only_when_they_change(env):
    """RQ writes a worker's state and heartbeat several times per job, most of them repeats; a jobctl
    worker leaves the repeats out, and what `rq info` and the dashboard read stays right."""
    from rq import Worker

    from jobctl.bookkeeping import BEAT_EVERY
    from jobctl.queue import get_queue, get_redis, serializer
    from jobctl.worker import JobctlWorker

    conn = get_redis()
    worker = JobctlWorker([get_queue("default", conn)], connection=conn, serializer=serializer())
    worker.register_birth()
    sent: list[str] = []
    execute = conn.execute_command

    def counting(*args, **kwargs):
        sent.append(str(args[0]).upper())
        return execute(*args, **kwargs)

    conn.execute_command = counting
    try:
        worker.set_state("busy")
        worker.set_state("busy")
        worker.heartbeat()
        worker.heartbeat()  # within a second of the last, and no later expiry: left out
        worker.set_current_job_working_time(0)  # it is 0 already
        assert sent == ["HSET", "HSET", "EXPIRE"]
        assert Worker.find_by_key(worker.key, connection=conn).get_state() == "busy"

        sent.clear()
        worker.heartbeat(3600)  # a later expiry is written at once
        assert sent == ["HSET", "EXPIRE"] and conn.ttl(worker.key) > 3000
        sent.clear()
        worker._beat_at -= BEAT_EVERY  # a second on, the next beat is written again
        worker.heartbeat()
        assert sent == ["HSET", "EXPIRE"] and conn.ttl(worker.key) <= worker.worker_ttl + 60
        sent.clear()
        worker.set_state("idle")
        worker.set_current_job_working_time(2.5)
        assert sent == ["HSET", "HSET"]
    finally:
        del conn.execute_command
    seen = Worker.find_by_key(worker.key, connection=conn)
    assert seen.get_state() == "idle" and seen.current_job_working_time == 2.5
    assert seen.last_heartbeat is not None
    worker.register_death()


@pytest.mark.parametrize("backend", ["sqlite"], indirect=True)
@pytest.mark.parametrize(
    ("ours", "plain"),
    [((), "rq.worker.Worker"), (("--no-fork",), "rq.worker.SimpleWorker")],
    ids=["forking", "no-fork"],
)
def test_a_worker_sends_redis_fewer_commands_per_job_than_plain_rq(private_redis, ours, plain):
    """jobctl's SQL record and progress come on top of RQ, but its worker asks less of Redis than RQ's
    own (RQ's repeated writes of the worker's state and heartbeats are left out): at least 15 % fewer
    commands per job, counted by a Redis server of the test's own (INFO commandstats) beyond what an
    idle burst sends."""
    import redis
    from rq import Queue

    from jobctl import service
    from jobctl.queue import serializer

    url = private_redis.url
    conn = redis.Redis.from_url(url)
    plain_queue = Queue("plain", connection=conn, serializer=serializer())
    workers = {
        "jobctl": [sys.executable, "-m", "jobctl", "worker", "--burst", *ours],
        "rq": [
            RQ_SCRIPT,
            "worker",
            "--burst",
            "-u",
            url,
            "-S",
            "rq.serializers.JSONSerializer",
            "-w",
            plain,
            "plain",
        ],
    }
    jobs = 100

    def commands(which: str, count: int) -> int:
        if which == "jobctl":
            service.submit_jobs([service.JobRequest(name=f"n{i}", task="noop") for i in range(count)])
        else:
            plain_queue.enqueue_many([Queue.prepare_data("tests.sample_tasks.noop") for _ in range(count)])
        conn.config_resetstat()
        subprocess.run(workers[which], env={**os.environ}, check=True, capture_output=True, timeout=120)
        stats = conn.info("commandstats")
        return sum(v["calls"] for name, v in stats.items() if name not in ("cmdstat_info", "cmdstat_config"))

    per_job = {which: (commands(which, jobs) - commands(which, 0)) / jobs for which in workers}
    assert len(service.list_jobs(statuses=["completed"], limit=2 * jobs)) == jobs and plain_queue.count == 0
    assert 0 < per_job["jobctl"] <= 0.85 * per_job["rq"], per_job  # 39-40 against 52-54 per job


def test_workers_take_no_jobs_while_rq_suspend_is_in_force(cli, env, start_worker):
    job_id = submit(cli, "later", "-t", "noop")
    subprocess.run([RQ_SCRIPT, "suspend", "-u", env["REDIS_URL"]], check=True, capture_output=True, env=env)
    burst = subprocess.run(
        [sys.executable, "-m", "jobctl", "worker", "--burst"],
        capture_output=True,
        text=True,
        timeout=60,
        env=env,
    )
    assert burst.returncode == 0 and "suspended" in burst.stdout, burst.stdout
    start_worker()
    time.sleep(2)
    assert show(cli, job_id)["status"] == "pending"
    subprocess.run([RQ_SCRIPT, "resume", "-u", env["REDIS_URL"]], check=True, capture_output=True, env=env)
    wait_for(status_is(cli, job_id, "completed"))


def test_graceful_shutdown_finishes_the_running_job(cli, start_worker):
    worker = start_worker()
    job_id = submit(cli, "finish me", "-t", "sleep", "-a", "seconds=2", "-a", "steps=4")
    wait_for(status_is(cli, job_id, "processing"))
    worker.proc.send_signal(signal.SIGTERM)
    assert worker.proc.wait(30) == 0
    assert show(cli, job_id)["status"] == "completed"


def test_second_signal_stops_jobs_and_marks_them_failed(cli, start_worker):
    worker = start_worker()
    job_id = submit(cli, "interrupted", "-t", "sleep", "-a", "seconds=30", "-a", "steps=30")
    wait_for(status_is(cli, job_id, "processing"))
    stop_cold(worker)
    failed = show(cli, job_id)
    assert failed["status"] == "failed", failed
    assert "cold shutdown" in failed["error"]


@pytest.mark.parametrize("worker_options", [(), ("--no-fork",)], ids=["forking", "no-fork"])
def test_a_job_stopped_by_a_cold_shutdown_is_retried_if_retries_remain(cli, start_worker, worker_options):
    worker = start_worker(*worker_options)
    job_id = submit(cli, "again", "-t", "pid", "-a", "seconds=30", "--retries", "1")
    wait_for(status_is(cli, job_id, "processing"))
    stop_cold(worker)
    waiting = show(cli, job_id)
    assert waiting["status"] == "pending" and waiting["attempts"] == 1, waiting
    assert [e["attempt"] for e in waiting["attempt_errors"]] == [1]
    assert "cold shutdown" in waiting["attempt_errors"][0]["error"]
    cli("cancel", str(job_id))  # the second attempt would sleep 30 s


@pytest.mark.parametrize("backend", ["postgres"], indirect=True)  # holds the row's lock so the claim waits
def test_a_stop_requested_while_the_worker_claims_a_job_lets_the_job_run_first(cli, start_worker, backend):
    """RQ stops an idle worker at once (an exception raised wherever it is); between taking a job off
    the queue and starting it, the worker claims the job's row, and a warm shutdown there must not
    leave that job unrun."""
    import sqlalchemy as sa

    from jobctl import store

    worker = start_worker()
    job_id = submit(cli, "held", "-t", "noop", "--in", "1s")
    waiting = sa.text(
        "SELECT count(*) FROM pg_stat_activity WHERE datname = current_database() "
        "AND wait_event_type = 'Lock' AND query LIKE 'UPDATE job %'"
    )

    def claim_waits() -> bool:
        with store.get_engine().connect() as watcher:  # a new transaction: a fresh view of the sessions
            return bool(watcher.execute(waiting).scalar())

    with store.begin() as conn:
        conn.execute(sa.select(store.JOB.c.id).where(store.JOB.c.id == job_id).with_for_update())
        wait_for(claim_waits, 30)  # the worker has taken the job off the queue; its claim waits for the lock
        worker.proc.send_signal(signal.SIGTERM)
        time.sleep(0.5)
    assert worker.proc.wait(30) == 0
    done = show(cli, job_id)
    assert done["status"] == "completed" and done["attempts"] == 1, done


@pytest.mark.parametrize("concurrency", ["2"])
def test_worker_pool_runs_jobs_in_parallel_processes(cli, start_worker, concurrency):
    start_worker("-c", concurrency)
    ids = [submit(cli, f"p{i}", "-t", "sleep", "-a", "seconds=1.5") for i in range(2)]
    jobs = [wait_for(status_is(cli, i, "completed"), 30) for i in ids]
    assert len({j["worker"] for j in jobs}) == 2
    first, second = sorted(jobs, key=lambda j: j["started_at"])
    assert second["started_at"] < first["completed_at"]  # they overlapped
    workers = cli("workers")
    assert workers.exit_code == 0 and workers.stdout.count("default") >= 2
