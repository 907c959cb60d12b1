"""Job logs on real workers: captured output, `logs` (--tail, --attempt, several ids), `-f`, the size cap.

Each test starts one worker and checks several things with it: starting workers is what costs time.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys

from tests.conftest import cli_env, ended, show, submit, wait_for


def test_logs_keep_stdout_stderr_and_logging_of_each_attempt(ops_env, cli, start_worker, tmp_path):
    start_worker()
    talk = submit(cli, "talk", "-t", "chatty", "-a", "lines=3", "-a", "fail=true")
    other = submit(cli, "other", "-t", "chatty", "-a", "lines=1")
    flaky = submit(cli, "flaky", "-t", "fail_once", "-a", f"marker={tmp_path / 'marker'}", "--retries", "1")
    assert wait_for(ended(cli, talk), 30)["status"] == "failed"
    wait_for(ended(cli, other), 30)
    assert wait_for(ended(cli, flaky), 30)["status"] == "completed"

    out = cli("logs", str(talk))
    assert out.exit_code == 0, out
    lines = out.stdout.splitlines()
    assert lines[0].endswith("INFO tests.ops_tasks: starting 3 lines")
    assert lines[1:4] == ["line 1", "line 2", "line 3"]
    assert lines[4] == "to stderr"
    assert lines[5].endswith("WARNING tests.ops_tasks: almost done")
    assert lines[6] == "raw fd write"
    assert len(lines) == 7  # the traceback is the job's error, not part of its output
    assert cli("logs", str(talk), "--tail", "2").stdout.splitlines() == lines[-2:]

    # Kept in SQL with the record: the Redis stream is not needed once the job ended.
    from jobctl import queue

    queue.get_redis().delete(f"jobctl:log:jobctl-{talk}-1")
    assert cli("logs", str(talk)).stdout.splitlines() == lines

    # Several ids: every line says whose it is; -f on ended jobs prints the same and returns.
    both = cli("logs", str(talk), str(other))
    assert both.exit_code == 0, both
    assert f"[{talk}] line 3" in both.stdout.splitlines()
    assert f"[{other}] line 1" in both.stdout.splitlines()
    assert all(line.startswith((f"[{talk}] ", f"[{other}] ")) for line in both.stdout.splitlines())
    followed = cli("logs", "-f", str(talk), str(other))
    assert followed.exit_code == 0, followed
    assert sorted(followed.stdout.splitlines()) == sorted(both.stdout.splitlines())

    # A retried job shows its latest attempt; earlier attempts stay readable.
    assert cli("logs", str(flaky)).stdout == "second attempt\n"
    assert cli("logs", str(flaky), "--attempt", "1").stdout == "first attempt\n"
    none = cli("logs", str(flaky), "--attempt", "3")
    assert none.stdout == "" and "has no attempt 3" in none.stderr

    missing = cli("logs", str(talk), "999")
    assert missing.exit_code == 3 and missing.stderr.strip() == "Error: job 999 not found"
    assert missing.stdout == ""
    waiting = submit(cli, "later", "-q", "nobody-serves-this")
    quiet = cli("logs", str(waiting))
    assert quiet.exit_code == 0 and quiet.stdout == ""
    assert f"job {waiting} has not started yet" in quiet.stderr


def test_follow_streams_while_running_cancel_keeps_output_and_the_cap_keeps_the_tail(
    ops_env, cli, start_worker, tmp_path, monkeypatch
):
    monkeypatch.setenv("JOBCTL_LOG_MAX_BYTES", "2000")
    start_worker()
    gate = tmp_path / "gate"
    gated = submit(cli, "gated", "-t", "gated", "-a", f"marker={gate}")
    follower = subprocess.Popen(
        [sys.executable, "-m", "jobctl", "logs", "-f", str(gated)],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env=cli_env(),
    )
    try:
        assert follower.stdout is not None
        assert follower.stdout.readline() == "before the gate\n"
        # The line arrived while the job still runs (it waits for the gate): streamed, not read at the end.
        assert show(cli, gated)["status"] == "processing"
        gate.touch()
        rest, err = follower.communicate(timeout=30)
    finally:
        if follower.poll() is None:
            follower.kill()
    assert follower.returncode == 0, err
    assert rest == "after the gate\n"
    assert show(cli, gated)["status"] == "completed"

    # Cancelled while printing: what it printed so far is kept.
    talk = submit(cli, "long talk", "-t", "chatty", "-a", "lines=100", "-a", "interval=0.1")
    wait_for(lambda: "line 2" in cli("logs", str(talk)).stdout, 30)
    assert cli("cancel", str(talk)).exit_code == 0
    assert wait_for(ended(cli, talk), 10)["status"] == "cancelled"
    kept = wait_for(lambda: cli("logs", str(talk)).stdout.splitlines(), 10)
    assert kept[1] == "line 1" and "line 2" in kept

    # JOBCTL_LOG_MAX_BYTES=2000: the last 2000 bytes are kept, in SQL and in the live stream.
    noisy = submit(cli, "noisy", "-t", "spew", "-a", "lines=500")
    assert wait_for(ended(cli, noisy), 30)["status"] == "completed"
    out = cli("logs", str(noisy))
    lines = out.stdout.splitlines()
    assert lines[-1].startswith("spew 000500 ")
    assert not any(line.startswith("spew 000001 ") for line in lines)
    assert 1500 < len(out.stdout.encode()) <= 2000
    assert "earlier bytes were dropped" in out.stderr
    from jobctl import queue

    assert queue.get_redis().xlen(f"jobctl:log:jobctl-{noisy}-1") == len(lines) + 1  # and the end marker

    # More than the capture's pipe holds (1 MiB), printed at once: the task waits for the reader,
    # which starts once the task has run a moment, and nothing is lost.
    flood = submit(cli, "flood", "-t", "spew", "-a", "lines=60000")
    assert wait_for(ended(cli, flood), 60)["status"] == "completed"
    tail = cli("logs", str(flood)).stdout.splitlines()
    assert tail[-1].startswith("spew 060000 ") and tail[-2].startswith("spew 059999 ")


def test_a_killed_work_horse_leaves_its_streamed_lines_in_the_database(ops_env, cli, start_worker):
    from jobctl import queue
    from jobctl.logs import stream_key

    start_worker()
    talk = submit(cli, "killed talk", "-t", "chatty", "-a", "lines=100", "-a", "interval=0.2")
    wait_for(lambda: "line 2" in cli("logs", str(talk)).stdout, 30)
    conn = queue.get_redis()
    beat = wait_for(lambda: conn.get(f"jobctl:alive:job:jobctl-{talk}-1"))
    os.kill(int(json.loads(beat)["pid"]), signal.SIGKILL)  # the work-horse dies; its worker lives on
    failed = wait_for(ended(cli, talk), 20)
    assert failed["status"] == "failed" and "SIGKILL" in failed["error"]
    conn.delete(stream_key(f"jobctl-{talk}-1"))  # what follows can only come from the database
    kept = cli("logs", str(talk)).stdout.splitlines()
    assert "line 1" in kept and "line 2" in kept
