"""Shell-command jobs on real workers: outcomes, output as logs, progress from output, the --allow-shell
boundary, and cancelling a whole process group."""

from __future__ import annotations

import json
import os
import shlex
import signal
import subprocess
from pathlib import Path

from tests.conftest import RQ_SCRIPT, cli_env, ended, show, submit, wait_for


def gone(pid: int) -> bool:
    """True once `pid` has exited (a zombie waiting for its reaper counts as exited)."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return True
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0] == "Z"
    except (OSError, IndexError):
        return True


def test_commands_run_on_an_allow_shell_worker(env, cli, start_worker, tmp_path):
    start_worker("--allow-shell")

    ok = submit(cli, "greet", "--", "sh", "-c", "echo out; echo err >&2")
    done = wait_for(ended(cli, ok), 30)
    assert done["status"] == "completed", done
    assert done["task"] == "shell" and done["queue"] == "default.shell"
    assert done["args"] == {"command": ["sh", "-c", "echo out; echo err >&2"]}
    assert done["result"]["exit_code"] == 0
    assert sorted(cli("logs", str(ok)).stdout.splitlines()) == ["err", "out"]

    bad = submit(cli, "fails", "--", "sh", "-c", "echo working; echo 'disk full' >&2; exit 3")
    failed = wait_for(ended(cli, bad), 30)
    assert failed["status"] == "failed"
    assert failed["error"].splitlines()[0] == "command exited with status 3: disk full"
    assert "Traceback" not in failed["error"]
    # stdout and stderr arrive through separate pipes: their relative order is not defined.
    assert sorted(cli("logs", str(bad)).stdout.splitlines()) == ["disk full", "working"]

    missing = submit(cli, "typo", "--", "no-such-command-here", "x")
    assert wait_for(ended(cli, missing), 30)["error"] == "command not found: no-such-command-here"

    # No NAME: the command line is the name. Progress from output lines.
    script = "for p in 25 50 75; do echo \"$p% done\"; sleep 0.05; done; printf 'copy 9/10\\r'; echo"
    counted = submit(cli, "--progress-pattern", r"(\d+)%", "--", "sh", "-c", script)
    result = wait_for(ended(cli, counted), 30)
    assert result["name"] == shlex.join(["sh", "-c", script])
    assert result["progress"] == {"current": 75, "total": 100, "message": "75% done"}
    pairs = submit(cli, "pairs", "--progress-pattern", r"copy (\d+)/(\d+)", "--", "sh", "-c", script)
    assert wait_for(ended(cli, pairs), 30)["progress"] == {"current": 9, "total": 10, "message": "copy 9/10"}
    listed = cli("list", "--json").stdout
    assert '"default.shell"' in listed

    # Cancel: SIGTERM then SIGKILL to the whole process group, even children ignoring SIGTERM.
    pids = tmp_path / "pids"
    stubborn = submit(
        cli,
        "stubborn",
        "--",
        "sh",
        "-c",
        f"trap '' TERM; sleep 60 & echo $$ $! > {pids}.tmp; mv {pids}.tmp {pids}; wait",
    )
    wait_for(pids.exists, 30)
    shell_pid, child_pid = (int(p) for p in pids.read_text().split())
    assert not gone(shell_pid) and not gone(child_pid)
    assert cli("cancel", str(stubborn)).exit_code == 0
    assert wait_for(ended(cli, stubborn), 5)["status"] == "cancelled"
    wait_for(lambda: gone(shell_pid) and gone(child_pid), 5)

    # The job's process killed outright (a cold shutdown, the OOM killer): its guard still ends the group.
    pids = tmp_path / "pids-killed"
    doomed = submit(
        cli,
        "doomed",
        "--",
        "sh",
        "-c",
        f"sleep 60 & echo $$ $PPID $! > {pids}.tmp; mv {pids}.tmp {pids}; wait",
    )
    wait_for(pids.exists, 30)
    shell_pid, horse_pid, child_pid = (int(p) for p in pids.read_text().split())
    os.kill(horse_pid, signal.SIGKILL)
    assert wait_for(ended(cli, doomed), 30)["status"] == "failed"
    wait_for(lambda: gone(shell_pid) and gone(child_pid), 10)


def test_only_allow_shell_workers_take_shell_jobs(env, cli, run, start_worker, background, tmp_path):
    plain = start_worker()
    shell_job = submit(cli, "echo", "--", "echo", "hello")
    normal = submit(cli, "normal", "-t", "noop")
    assert wait_for(ended(cli, normal), 30)["status"] == "completed"
    assert show(cli, shell_job)["status"] == "pending"  # left queued for a worker that runs commands
    plain.stop()

    refused = run("worker", "-q", "default.shell", "--burst")
    assert refused.returncode == 2
    assert "Error: queue 'default.shell' holds shell commands" in refused.stderr
    assert "--allow-shell" in refused.stderr

    # A plain RQ worker pointed at the shell queue without JOBCTL_ALLOW_SHELL: the task refuses to run.
    rq_worker = background(
        [
            RQ_SCRIPT,
            "worker",
            "-u",
            env["REDIS_URL"],
            "-S",
            "rq.serializers.JSONSerializer",
            "--burst",
            "default.shell",
        ],
        env=cli_env(),
    )
    failed = wait_for(ended(cli, shell_job), 30)
    assert failed["status"] == "failed"
    assert failed["error"].startswith("this worker does not run shell commands")
    rq_worker.stop()

    assert cli("retry", str(shell_job)).exit_code == 0
    start_worker("--allow-shell")
    assert wait_for(ended(cli, shell_job), 30)["status"] == "completed"
    assert cli("logs", str(shell_job)).stdout == "hello\n"


MALFORMED = [
    (["x", "--progress-pattern", "(\\d+)%"], "--progress-pattern goes with a command after --"),
    (["x", "--progress-pattern", "(", "--", "ls"], "invalid --progress-pattern '('"),
    (["x", "--progress-pattern", "done", "--", "ls"], "needs a group"),
    (["x", "-t", "noop", "--", "ls"], "leave out -t"),
    (["x", "-a", "steps=1", "--", "ls"], "-a sets task arguments"),
    (["x", "--"], "missing the command after --"),
    (["x", "ls", "-l"], "No such option: -l"),
    (["x", "ls"], "unexpected extra argument"),
    (["x", "--from", "-", "--", "ls"], "give either --from or a command"),
]


def test_submit_refuses_malformed_commands(env, cli):
    for args, message in MALFORMED:
        out = cli("submit", *args)
        assert out.exit_code == 2, (args, out)
        assert out.stderr.startswith("Error: ") and message in out.stderr, (args, out.stderr)
        assert out.stderr.count("\n") == 1
    assert json.loads(cli("list", "--json").stdout) == []


def test_cancelling_a_queued_shell_job_and_bulk_submission_route_to_the_shell_queue(env, cli):
    queued = submit(cli, "later", "-q", "builds", "--", "make", "all")
    assert show(cli, queued)["queue"] == "builds.shell"
    bulk = cli(
        "submit", "--from", "-", input='{"name": "b", "task": "shell", "args": {"command": ["true"]}}\n'
    )
    assert bulk.exit_code == 0, bulk
    assert show(cli, int(bulk.stdout))["queue"] == "default.shell"
    assert cli("cancel", str(queued)).exit_code == 0
    assert show(cli, queued)["status"] == "cancelled"
    tasks = cli("tasks").stdout
    assert "shell" in tasks and "command: list" in tasks


def test_stop_group_kills_what_ignores_sigterm_after_the_grace():
    from jobctl.shell import stop_group

    proc = subprocess.Popen(
        ["sh", "-c", "trap '' TERM; sleep 30 & echo $!; wait"], start_new_session=True, stdout=subprocess.PIPE
    )
    assert proc.stdout is not None
    child = int(proc.stdout.readline())
    stop_group(proc, 0.3)
    assert proc.wait(5) == -signal.SIGKILL  # SIGTERM was ignored: SIGKILL ended it
    wait_for(lambda: gone(child), 5)
