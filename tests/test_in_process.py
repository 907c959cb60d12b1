"""`jobctl worker --no-fork`: jobs run in the worker's own process, with the same job loop around them."""

from __future__ import annotations

import signal
import time

from tests.conftest import ended, show, stop_cold, submit, wait_for


def test_jobs_run_in_the_worker_process_with_progress_results_and_logs(cli, start_worker):
    worker = start_worker("--no-fork")
    first = submit(cli, "first", "-t", "pid")
    second = submit(cli, "second", "-t", "sleep", "-a", "seconds=0.3", "-a", "steps=3")
    third = submit(cli, "third", "-t", "pid")
    done = {i: wait_for(ended(cli, i), 30) for i in (first, second, third)}
    assert [done[i]["status"] for i in (first, second, third)] == ["completed"] * 3
    assert done[first]["result"] == done[third]["result"] == worker.pid  # no work-horse was forked
    assert done[second]["progress"] == {"current": 3, "total": 3, "message": "slept 3"}
    logs = cli("logs", str(first))
    assert logs.exit_code == 0 and f"running in {worker.pid}" in logs.stdout
    assert worker.proc.poll() is None


def test_cancel_stops_the_running_task_and_the_worker_carries_on(cli, start_worker):
    worker = start_worker("--no-fork")
    long = submit(cli, "long", "-t", "sleep", "-a", "seconds=30", "-a", "steps=300")
    wait_for(lambda: show(cli, long)["status"] == "processing")
    assert cli("cancel", str(long)).exit_code == 0
    after = submit(cli, "after", "-t", "pid")
    assert wait_for(ended(cli, after), 15)["result"] == worker.pid  # the task stopped well before 30 s
    final = show(cli, long)
    assert final["status"] == "cancelled" and final["error"] is None
    assert worker.proc.poll() is None


def test_time_limit_fails_the_job_and_the_worker_carries_on(cli, start_worker):
    worker = start_worker("--no-fork")
    slow = submit(cli, "too slow", "-t", "sleep", "-a", "seconds=20", "--timeout", "1")
    failed = wait_for(ended(cli, slow), 30)
    assert failed["status"] == "failed" and failed["error"].startswith("timed out")
    after = submit(cli, "after", "-t", "pid")
    assert wait_for(ended(cli, after), 15)["result"] == worker.pid


def test_sigterm_lets_the_running_job_finish_then_stops(cli, start_worker):
    worker = start_worker("--no-fork")
    job_id = submit(cli, "finish me", "-t", "sleep", "-a", "seconds=2", "-a", "steps=4")
    wait_for(lambda: show(cli, job_id)["status"] == "processing")
    worker.proc.send_signal(signal.SIGTERM)
    assert worker.proc.wait(30) == 0
    assert show(cli, job_id)["status"] == "completed"


def test_second_signal_stops_the_running_job_and_marks_it_failed(cli, start_worker):
    worker = start_worker("--no-fork")
    job_id = submit(cli, "interrupted", "-t", "sleep", "-a", "seconds=30", "-a", "steps=30")
    wait_for(lambda: show(cli, job_id)["status"] == "processing")
    stop_cold(worker)
    failed = show(cli, job_id)
    assert failed["status"] == "failed", failed
    assert "cold shutdown" in failed["error"]


def test_a_long_job_outlives_the_liveness_limit_while_its_worker_beats(cli, start_worker, monkeypatch):
    from jobctl.config import get_settings
    from jobctl.reconcile import run_pass

    monkeypatch.setenv("JOBCTL_LOST_AFTER", "1.5")
    monkeypatch.setenv("JOBCTL_RECONCILE_INTERVAL", "0.5")  # the worker reconciles too
    get_settings.cache_clear()
    start_worker("--no-fork")
    job_id = submit(cli, "long", "-t", "sleep", "-a", "seconds=5", "-a", "steps=5")
    wait_for(lambda: show(cli, job_id)["status"] == "processing")
    while show(cli, job_id)["status"] == "processing":
        assert run_pass().lost == []  # the worker's heartbeat names the job it runs
        time.sleep(0.3)
    assert show(cli, job_id)["status"] == "completed"
