"""`jobctl demo`, and the README's quick start run for real in a fresh virtual environment."""

from __future__ import annotations

import json
import os
import re
import shutil
import signal
import sqlite3
import subprocess
import sys
import time
from pathlib import Path

import pytest

from jobctl.demo import DEMO_JOBS, DEMO_QUEUE
from tests.conftest import wait_for
from tests.zero_setup import (
    ROOT,
    assert_nothing_left,
    clear_backend_settings,
    jobctl,
    processes_using,
    zero_setup_env,
)


@pytest.fixture
def zero_setup(monkeypatch, tmp_path):
    """Nothing configured: embedded Redis and SQLite in a fresh data directory (yielded)."""
    yield from zero_setup_env(monkeypatch, tmp_path)


def demo_rows(db: Path) -> list[tuple[str, str, str]]:
    conn = sqlite3.connect(db, timeout=30)
    try:
        return conn.execute("SELECT name, queue, status FROM job ORDER BY id").fetchall()
    finally:
        conn.close()


def check_summary(stdout: str) -> None:
    """The summary table names every demo job with the outcome it was designed to have."""
    assert "Demo summary" in stdout, stdout
    summary = stdout[stdout.index("Demo summary") :]
    for spec in DEMO_JOBS:
        line = next(line for line in summary.splitlines() if spec.name in line)
        assert ("failed" if spec.fails else "completed") in line, line
    assert "Random processing error (by design)" in summary


def test_demo_runs_with_nothing_configured_and_leaves_nothing_running(zero_setup):
    out = jobctl("demo", timeout=300)
    assert out.returncode == 0, out.stdout + out.stderr
    check_summary(out.stdout)
    assert "embedded Redis" in out.stderr and "SQLite" in out.stderr
    expected = [(s.name, DEMO_QUEUE, "failed" if s.fails else "completed") for s in DEMO_JOBS]
    assert demo_rows(zero_setup / "jobctl.db") == expected
    assert_nothing_left(zero_setup)  # workers, embedded server and its watchdog are all gone


@pytest.mark.parametrize("backend", [pytest.param("postgres", marks=pytest.mark.postgres)])
def test_demo_works_against_configured_servers_and_leaves_other_queues_alone(env, run):
    bystander = run("submit", "not the demo's", "-t", "noop")
    assert bystander.returncode == 0, bystander.stderr
    out = run("demo", timeout=300)
    assert out.returncode == 0, out.stdout + out.stderr
    check_summary(out.stdout)
    assert "the configured Redis" in out.stderr and "the configured database" in out.stderr

    listed = run("list", "--json")
    jobs = {j["name"]: j for j in json.loads(listed.stdout)}
    assert jobs["not the demo's"]["status"] == "pending"  # its workers never took another queue's job
    assert {jobs[s.name]["queue"] for s in DEMO_JOBS} == {DEMO_QUEUE}
    assert_nothing_left(Path(env["JOBCTL_DATA_DIR"]))


def test_ctrl_c_cancels_the_demo_jobs_and_stops_its_workers(zero_setup, tmp_path):
    err = tmp_path / "stderr"
    with open(tmp_path / "stdout", "w") as out_file, open(err, "w") as err_file:
        demo = subprocess.Popen([sys.executable, "-m", "jobctl", "demo"], stdout=out_file, stderr=err_file)
        try:
            db = zero_setup / "jobctl.db"
            wait_for(lambda: "started 2 workers" in err.read_text(), 60)
            wait_for(lambda: any(status == "processing" for *_, status in demo_rows(db)), 60)
            demo.send_signal(signal.SIGINT)
            assert demo.wait(60) == 130, err.read_text()
        finally:
            if demo.poll() is None:
                demo.kill()
    statuses = [status for *_, status in demo_rows(db)]
    assert "cancelled" in statuses
    assert not {"pending", "processing"} & set(statuses)  # an interrupted demo leaves nothing to run later
    assert "Interrupted" in err.read_text()
    assert_nothing_left(zero_setup)


def test_workers_dying_under_the_demo_end_it_with_an_error_and_nothing_left(zero_setup, tmp_path):
    err = tmp_path / "stderr"
    with open(err, "w") as err_file:
        cmd = [sys.executable, "-m", "jobctl", "demo"]
        demo = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=err_file)
        try:
            wait_for(lambda: "started 2 workers" in err.read_text(), 60)
            workers = wait_for(lambda: [pid for pid, cmd in processes_using(zero_setup).items()
                                        if "jobctl worker" in cmd and pid != demo.pid], 30)  # fmt: skip
            for pid in workers:
                os.kill(pid, signal.SIGKILL)
            assert demo.wait(120) == 1
        finally:
            if demo.poll() is None:
                demo.kill()
    assert "Error: the demo's workers exited" in err.read_text()
    statuses = {status for *_, status in demo_rows(zero_setup / "jobctl.db")}
    assert not {"pending", "processing"} & statuses
    assert_nothing_left(zero_setup)


# ---------------------------------------------------------------- the README's quick start


def quick_start_lines() -> list[str]:
    readme = (ROOT / "README.md").read_text()
    section = readme[readme.index("## Quick start") :]
    block = re.search(r"```[a-z]*\n(.*?)```", section, re.S)
    assert block is not None
    return [line for line in block.group(1).splitlines() if line.strip()]


def pip_cache() -> str:
    out = subprocess.run([sys.executable, "-m", "pip", "cache", "dir"], capture_output=True, text=True)
    return out.stdout.strip() if out.returncode == 0 and out.stdout.strip() else ""


@pytest.mark.slow
def test_the_readme_quick_start_works_on_a_fresh_machine_with_only_python(tmp_path, monkeypatch):
    lines = quick_start_lines()
    assert len(lines) == 2 and "jobctl demo" in lines[0] and "[test]" in lines[1] and "pytest" in lines[1]

    src = tmp_path / "jobctl"
    shutil.copytree(ROOT, src, ignore=shutil.ignore_patterns(
        ".git", ".venv", ".ci", "venv", "__pycache__", "*.egg-info", "build", "dist", ".*_cache", "artifacts",
    ))  # fmt: skip
    venv = tmp_path / "venv"
    subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True, timeout=120)
    home = tmp_path / "home"
    home.mkdir()
    clear_backend_settings(monkeypatch)
    for name in ("PYTHONPATH", "VIRTUAL_ENV", "PYTHONHOME", "CI"):
        monkeypatch.delenv(name, raising=False)
    for name in list(os.environ):
        if name.startswith("XDG_"):
            monkeypatch.delenv(name)
    env = {
        **os.environ,
        "HOME": str(home),
        # Only the new environment's scripts: no redis-server or anything else from the machine.
        "PATH": str(venv / "bin"),
        "VIRTUAL_ENV": str(venv),
        "PIP_DISABLE_PIP_VERSION_CHECK": "1",
        "PYTHONUNBUFFERED": "1",
    }
    if pip_cache():
        env["PIP_CACHE_DIR"] = pip_cache()  # keep pip's cache: the same wheels, fetched once

    started = time.monotonic()
    first = subprocess.run(["/bin/bash", "-c", lines[0]], cwd=src, env=env, capture_output=True, text=True,
                           timeout=900)  # fmt: skip
    assert first.returncode == 0, first.stdout[-3000:] + first.stderr[-3000:]
    check_summary(first.stdout)
    assert "embedded Redis" in first.stderr
    data = home / ".local" / "share" / "jobctl"
    assert (data / "jobctl.db").exists() and (data / "redis").is_dir()
    assert_nothing_left(home)  # no redis-server, watchdog or worker of this HOME is left
    print(f"line 1 took {time.monotonic() - started:.0f} s")

    # Line 2 as written installs the test extras; its `pytest` runs here on one quick test only
    # (the whole suite is what runs this test), with no Redis or PostgreSQL server to be found.
    install, _, runner = lines[1].rpartition(" && ")
    assert runner.strip() == "pytest"
    second = subprocess.run(["/bin/bash", "-c", install], cwd=src, env=env, capture_output=True, text=True,
                            timeout=900)  # fmt: skip
    assert second.returncode == 0, second.stdout[-3000:] + second.stderr[-3000:]
    no_servers = {
        "JOBCTL_TEST_REDIS_URL": "redis://127.0.0.1:1",
        "JOBCTL_TEST_POSTGRES_URL": "postgresql://postgres@127.0.0.1:1/postgres",
    }
    selection = ["tests/test_embedded.py::test_a_short_command_starts_the_server_and_stops_it_when_it_exits"]
    cmd = ["pytest", "-p", "no:cacheprovider", *selection]
    env.update(no_servers)
    tests = subprocess.run(cmd, cwd=src, env=env, capture_output=True, text=True, timeout=600)
    assert tests.returncode == 0, tests.stdout[-3000:] + tests.stderr[-3000:]
    assert "1 passed" in tests.stdout
    assert "skipped: Redis server" in tests.stdout and "skipped: PostgreSQL" in tests.stdout
    assert_nothing_left(home)
