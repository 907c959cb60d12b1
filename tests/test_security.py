"""Security (SPEC §9): JSON only; only the dispatch function and registered tasks run; secrets stay secret."""

from __future__ import annotations

import json
import os
import pathlib
import signal
import uuid

import pytest
import redis

from jobctl import listing
from tests.conftest import reset_caches, wait_for
from tests.servers import PostgresServer, RedisServer, postgres_available

SQLITE_ONLY = pytest.mark.parametrize("backend", ["sqlite"], indirect=True)
REDIS_SECRET = "rds-Pa55-7c1e"
PG_SECRET = "pg-Pa55-4b2d"


class Unpickled:
    """Whoever unpickles this creates the marker file."""

    def __init__(self, marker: pathlib.Path) -> None:
        self.marker = marker

    def __reduce__(self):  # type: ignore[no-untyped-def]
        return (pathlib.Path.touch, (self.marker,))


@pytest.fixture
def importable(tmp_path, monkeypatch):
    """A module `evil_import` on the workers' path that leaves a marker file when it is imported."""
    marker = tmp_path / "imported"
    (tmp_path / "modules").mkdir()
    (tmp_path / "modules" / "evil_import.py").write_text(
        f"import pathlib\npathlib.Path({str(marker)!r}).touch()\n\ndef run(*a, **k):\n    return 'ran'\n"
    )
    monkeypatch.setenv("PYTHONPATH", f"{tmp_path / 'modules'}{os.pathsep}{os.environ['PYTHONPATH']}")
    return marker


def rq_status(rq_job) -> str:
    return rq_job.get_status(refresh=True).value


def exc_of(rq_job) -> str:
    result = rq_job.latest_result()
    return result.exc_string if result is not None else ""


# ---------------------------------------------------------------- what workers run


@SQLITE_ONLY
def test_pickled_jobs_are_refused_and_never_unpickled(env, cli, start_worker, tmp_path):
    from rq import Queue

    from jobctl import queue

    conn = queue.get_redis()
    in_args, in_meta = tmp_path / "from-args", tmp_path / "from-meta"
    pickled = Queue("default", connection=conn)  # RQ's default serializer: pickle
    dispatch = pickled.enqueue("jobctl.runtime.run_job", Unpickled(in_args), 1)
    foreign = pickled.enqueue("os.getcwd", meta={"x": Unpickled(in_meta)})
    after = cli("submit", "after", "-t", "noop")
    worker = start_worker("--burst")
    assert worker.proc.wait(60) == 0  # refused, not crashed
    assert not in_args.exists() and not in_meta.exists()
    json_view = Queue("default", connection=conn, serializer=queue.serializer())
    for rq_job in (json_view.fetch_job(dispatch.id), json_view.fetch_job(foreign.id)):
        assert rq_status(rq_job) == "failed"
        assert "refused: its payload is not JSON" in exc_of(rq_job)
    assert json.loads(cli("show", after.stdout.strip(), "--json").stdout)["status"] == "completed"


@SQLITE_ONLY
def test_foreign_functions_callbacks_and_arguments_are_refused_without_import(
    env, cli, start_worker, importable
):
    from rq import Callback, Queue

    from jobctl import queue

    q = Queue("default", connection=queue.get_redis(), serializer=queue.serializer())
    refused = {
        q.enqueue("evil_import.run"): "is not jobctl's dispatch function",
        q.enqueue("jobctl.runtime.run_job", 1, 1, on_success=Callback("evil_import.run")): "callbacks",
        q.enqueue("jobctl.runtime.run_job", 1, 1, on_failure=Callback("evil_import.run")): "callbacks",
        q.enqueue("jobctl.runtime.run_job", "1; DROP TABLE job", 1): "arguments are not",
        q.enqueue("jobctl.runtime.run_job", 1, 1, extra="x"): "arguments are not",
    }
    worker = start_worker("--burst")
    assert worker.proc.wait(60) == 0
    assert not importable.exists()
    for rq_job, reason in refused.items():
        assert rq_status(rq_job) == "failed" and reason in exc_of(rq_job), exc_of(rq_job)


@SQLITE_ONLY
def test_a_task_that_is_not_registered_fails_without_being_imported(env, cli, start_worker, importable):
    from jobctl import queue, store

    (row,) = store.insert_jobs(  # as if submitted from a machine with other JOBCTL_TASKS
        [{"name": "unregistered", "task": "evil_import.run", "args": {}, "queue": "default"}],
        lambda i: queue.rq_job_id(i, 1),
    )
    queue.enqueue([row])
    start_worker("--burst").proc.wait(60)
    failed = json.loads(cli("show", str(row.id), "--json").stdout)
    assert failed["status"] == "failed" and "not registered" in failed["error"]
    assert not importable.exists()
    assert cli("submit", "x", "-t", "evil_import.run").exit_code == 2  # and submit refuses it up front
    assert not importable.exists()


# ---------------------------------------------------------------- secrets


@pytest.fixture(scope="module")
def secret_postgres():
    if not postgres_available():
        pytest.skip("initdb/pg_ctl not installed")
    server = PostgresServer(password=PG_SECRET).start()
    yield server
    server.close()


@pytest.fixture
def secret_backends(env, secret_postgres, monkeypatch):
    """Redis and PostgreSQL that both need a password, given in the URLs."""
    from jobctl import schema

    server = RedisServer(password=REDIS_SECRET).start()
    monkeypatch.setenv("REDIS_URL", server.url)
    monkeypatch.setenv("DATABASE_URL", secret_postgres.create_database(f"sec_{uuid.uuid4().hex[:8]}"))
    monkeypatch.setenv("JOBCTL_LOST_AFTER", "2")
    monkeypatch.setenv("JOBCTL_RECONCILE_INTERVAL", "0.5")
    reset_caches()
    schema.upgrade_schema()
    yield server
    server.close()


def everything_stored(redis_url: str) -> str:
    """Every value in Redis and every row in the database, as text."""

    conn = redis.Redis.from_url(redis_url)
    parts = []
    for key in conn.scan_iter("*"):
        kind = conn.type(key)
        if kind == b"string":
            parts.append(repr(conn.get(key)))
        elif kind == b"hash":
            parts.append(repr(conn.hgetall(key)))
        elif kind == b"list":
            parts.append(repr(conn.lrange(key, 0, -1)))
        elif kind in (b"set", b"zset"):
            parts.append(repr(conn.zrange(key, 0, -1) if kind == b"zset" else conn.smembers(key)))
        elif kind == b"stream":
            parts.append(repr(conn.xrange(key)))
    conn.close()
    rows = listing.list_jobs(limit=1000)
    parts += [json.dumps(r.to_public()) for r in rows]
    return "\n".join(parts)


@SQLITE_ONLY
def test_secrets_never_appear_in_output_logs_records_or_errors(
    cli, run, secret_backends, start_worker, tmp_path, monkeypatch
):
    start_worker()
    start_worker()  # one runs the long job, the other answers `health`
    seen: list[str] = []

    def jobctl(*args: str, **extra: str):
        with monkeypatch.context() as patch:
            for name, value in extra.items():
                patch.setenv(name, value)
            reset_caches()
            out = cli(*args)
        reset_caches()
        seen.append(out.stdout + out.stderr)
        return out

    ok = jobctl("submit", "fine", "-t", "sleep", "-a", "seconds=0.2")
    bad = jobctl("submit", "broken", "-t", "boom", "-a", f"message=not a secret {uuid.uuid4().hex}")
    long = jobctl("submit", "cut short", "-t", "sleep", "-a", "seconds=60")
    assert ok.exit_code == bad.exit_code == long.exit_code == 0
    long_id = long.stdout.strip()

    def status(job_id: str) -> str:
        return json.loads(jobctl("show", job_id, "--json").stdout)["status"]

    wait_for(lambda: status(long_id) == "processing")
    for args in (
        ["list"],
        ["list", "--json"],
        ["show", ok.stdout.strip()],
        ["show", bad.stdout.strip()],
        ["workers"],
        ["config"],
        ["health", "--timeout", "20"],
        ["tasks"],
    ):
        assert jobctl(*args).exit_code == 0
    conn = redis.Redis.from_url(os.environ["REDIS_URL"])
    horse = json.loads(wait_for(lambda: conn.get(f"jobctl:alive:job:jobctl-{long_id}-1")))["pid"]
    parent = int(pathlib.Path(f"/proc/{horse}/stat").read_text().rsplit(")", 1)[1].split()[1])
    os.kill(horse, signal.SIGKILL)
    os.killpg(parent, signal.SIGKILL)  # the worker and its scheduler; found lost by the other worker
    wait_for(lambda: status(long_id) == "failed", 30)
    assert status(bad.stdout.strip()) == "failed"
    # wrong passwords and unreachable servers: masked in every error
    redis_url, database_url = os.environ["REDIS_URL"], os.environ["DATABASE_URL"]
    for extra in (
        {"REDIS_URL": redis_url.replace(REDIS_SECRET, REDIS_SECRET + "x")},
        {"DATABASE_URL": database_url.replace(PG_SECRET, PG_SECRET + "x")},
        {"REDIS_URL": f"redis://:{REDIS_SECRET}@127.0.0.1:1/0"},
        {"DATABASE_URL": f"postgresql://postgres:{PG_SECRET}@127.0.0.1:1/x"},
        {
            "DATABASE_URL": "",
            "POSTGRES_SERVER": "127.0.0.1",
            "POSTGRES_PORT": "1",
            "POSTGRES_PASSWORD": PG_SECRET,
        },
        {"REDIS_URL": "", "REDIS_HOST": "127.0.0.1", "REDIS_PORT": "1", "REDIS_PASSWORD": REDIS_SECRET},
    ):
        out = jobctl("submit", "refused", "-t", "noop", **extra)
        assert out.exit_code == 4 and "***" in out.stderr and "Traceback" not in out.stderr, out.stderr
    # and through the real entry point, in a process of its own
    real = run("submit", "refused", "-t", "noop", REDIS_URL=redis_url.replace(REDIS_SECRET, "wrong"))
    assert real.returncode == 4 and "***" in real.stderr and "Traceback" not in real.stderr
    seen.append(real.stdout + real.stderr)
    logs = "".join(p.read_text() for p in tmp_path.glob("worker-*.log"))
    stored = everything_stored(redis_url)
    for secret in (REDIS_SECRET, PG_SECRET):
        for where, text in (("command output", "\n".join(seen)), ("worker logs", logs), ("stored", stored)):
            assert secret not in text, f"{secret!r} found in {where}"
