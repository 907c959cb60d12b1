"""Bulk submission (`submit --from`): ids taken up front, COPY / executemany, and the pipelined enqueue
that writes RQ's job hashes itself (attempts.py), checked against RQ and run by real workers."""

from __future__ import annotations

import json
import subprocess
import sys
from datetime import UTC, datetime, timedelta

import pytest

from jobctl import listing
from tests.conftest import cli_env, wait_for

TRICKY = [
    "tab\there",
    "new\nline",
    "carriage\rreturn",
    "back\\slash",
    "\\N",
    "\\.",
    "ünïcødé ✓ 日本",
    "[bold]not markup[/]",
    "'quotes' \"and\" ,commas,",
]


def rows(cli) -> list[dict]:
    out = cli("list", "--json", "--limit", "1000")
    assert out.exit_code == 0, out
    return sorted(json.loads(out.stdout), key=lambda j: j["id"])


def lines(*jobs: dict) -> str:
    return "".join(json.dumps(job) + "\n" for job in jobs)


def test_every_value_is_stored_exactly_as_given(cli):
    """What COPY (PostgreSQL) and the executemany (SQLite) write reads back as typed."""
    jobs = [
        {"name": name, "task": "tests.sample_tasks.echo", "args": {"text": name}, "description": name}
        for name in TRICKY
    ]
    jobs.append({"name": "nested", "task": "noop", "args": {}, "description": ""})
    jobs.append(
        {
            "name": "options",
            "task": "sleep",
            "args": {"seconds": 0.5, "steps": 2},
            "retries": 2,
            "description": "r",
        }
    )
    out = cli("submit", "--from", "-", input=lines(*jobs))
    assert out.exit_code == 0, out
    ids = [int(i) for i in out.stdout.split()]
    assert ids == sorted(ids) and len(set(ids)) == len(jobs)
    stored = rows(cli)
    assert [j["id"] for j in stored] == ids
    for job, row in zip(jobs, stored, strict=True):
        assert row["name"] == job["name"] and row["description"] == job["description"]
        assert row["args"] == job["args"] and row["task"] == job["task"]
        assert row["status"] == "pending" and row["attempts"] == 0
        assert row["task_id"] == f"jobctl-{row['id']}-1"
        assert row["created_at"].endswith("+00:00") and row["created_at"] == row["updated_at"]
        assert row["depends_on"] is None and row["unique_key"] is None and row["blocked"] is False
    assert stored[-1]["retries"] == 2 and stored[0]["retries"] == 0


def test_bulk_jobs_run_to_completion_on_a_real_worker(run, cli, start_worker):
    jobs = [
        {"name": f"echo {i}", "task": "tests.sample_tasks.echo", "args": {"text": f"#{i}"}} for i in range(60)
    ]
    jobs += [
        {"name": "urgent", "task": "tests.sample_tasks.echo", "args": {"text": "!"}, "priority": "high"},
        {"name": "first", "task": "tests.sample_tasks.echo", "args": {"text": "1"}, "at_front": True},
        {"name": "elsewhere", "task": "tests.sample_tasks.echo", "args": {"text": "q"}, "queue": "other"},
        {"name": TRICKY[0], "task": "tests.sample_tasks.echo", "args": {"text": TRICKY[1]}},
    ]
    out = run("submit", "--from", "-", input=lines(*jobs))
    assert out.returncode == 0, out.stderr
    ids = [int(i) for i in out.stdout.split()]
    worker = start_worker("--burst", "-q", "default", "-q", "other", wait=False)
    assert worker.proc.wait(120) == 0, worker.output()
    done = {j["id"]: j for j in rows(cli)}
    for job_id, job in zip(ids, jobs, strict=True):
        row = done[job_id]
        assert row["status"] == "completed", f"{row}\n{worker.output()}"
        assert row["result"] == job["args"]["text"] and row["attempts"] == 1 and row["worker"]


def test_a_bad_line_rejects_the_whole_file_and_stores_nothing(cli, tmp_path):
    from jobctl import queue

    path = tmp_path / "jobs.jsonl"
    good = [{"name": f"ok {i}", "task": "noop"} for i in range(2000)]
    path.write_text(lines(*good) + '{"name": "bad", "task": "noop", "retries": "many"}\n')
    out = cli("submit", "--from", str(path))
    assert out.exit_code == 2 and out.stderr.startswith("Error: line 2001: 'retries' must be"), out
    assert out.stderr.count("\n") == 1 and out.stdout == ""
    assert rows(cli) == []
    assert queue.get_redis().keys("rq:*") == []


@pytest.mark.parametrize(
    ("line", "message"),
    [
        ({"name": "x", "task": "noop", "retries": None}, "'retries' must be an integer"),
        ({"name": "x", "task": "noop", "timeout": [1]}, "invalid timeout"),
        ({"name": "x", "task": "noop", "args": {"n": float("nan")}}, "task arguments are not valid JSON"),
    ],
)
def test_bad_values_on_a_line_are_usage_errors(cli, line, message):
    out = cli("submit", "--from", "-", input=lines({"name": "good", "task": "noop"}, line))
    assert out.exit_code == 2 and out.stderr.startswith(f"Error: line 2: {message}"), out
    assert rows(cli) == []


def test_lines_with_their_own_options_and_the_commands_options(cli):
    """Lines that set no option share the command's (checked once); a line may set its own."""
    before = datetime.now(UTC)
    text = lines({"name": "plain"}, {"name": "own", "priority": "low", "retries": 1, "in": "1h"})
    out = cli("submit", "--from", "-", "-t", "noop", "--priority", "high", "--in", "2h", input=text)
    assert out.exit_code == 0, out
    plain, own = rows(cli)
    assert plain["priority"] == "high" and plain["retries"] == 0
    assert own["priority"] == "low" and own["retries"] == 1
    due_plain = datetime.fromisoformat(plain["scheduled_for"])
    due_own = datetime.fromisoformat(own["scheduled_for"])
    assert due_plain - before >= timedelta(hours=2) and timedelta(hours=1) <= due_own - before < timedelta(
        hours=2
    )


def test_redis_down_fails_every_row_of_the_file_with_exit_4(run, cli):
    text = lines(*({"name": f"lost {i}", "task": "noop"} for i in range(1500)))
    out = run("submit", "--from", "-", input=text, REDIS_URL="redis://127.0.0.1:1/0")
    assert out.returncode == 4 and out.stderr.startswith("Error: cannot reach Redis"), out.stderr
    assert out.stderr.count("\n") == 1 and out.stdout == ""
    stored = rows(cli)
    assert len(stored) == 1000  # list's limit; the rest are checked through the store below
    from jobctl import store

    every = store.get_jobs(list(range(1, 1501)))
    assert len(every) == 1500
    assert {j.status for j in every.values()} == {"failed"}
    assert all((j.error or "").startswith("could not be queued") for j in every.values())


def test_concurrent_bulk_submissions_get_distinct_ids(env):
    """Ids are taken before the insert: two submissions at once never collide."""
    text = lines(*({"name": f"j{i}", "task": "noop"} for i in range(800)))
    procs = [
        subprocess.Popen(
            [sys.executable, "-m", "jobctl", "submit", "--from", "-"],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
            env=cli_env(),
        )
        for _ in range(3)
    ]
    outs = [p.communicate(text, timeout=120) for p in procs]
    assert [p.returncode for p in procs] == [0, 0, 0], outs
    ids = [int(i) for out, _err in outs for i in out.split()]
    assert len(ids) == 2400 and len(set(ids)) == 2400
    from jobctl import queue, store

    stored = store.get_jobs(ids)
    assert all(job.task_id == f"jobctl-{job_id}-1" for job_id, job in stored.items())
    assert queue.get_redis().llen("rq:queue:default") == 2400


def test_the_enqueue_writes_what_rq_writes(env):
    """attempts.py renders RQ's job hash itself; it must match, field for field, what RQ's own
    `Queue.enqueue_many` writes for the same job (timestamps aside), and order the queue the same."""
    from rq import Queue

    from jobctl import queue
    from jobctl.attempts import Attempt, enqueue

    conn = queue.get_redis()
    settings_timeout = 77
    attempts = [
        Attempt(1, 1, "plain", "noop", "mine", "normal"),
        Attempt(2, 3, TRICKY[6], "tests.sample_tasks.echo", "mine", "normal", timeout=settings_timeout),
        Attempt(3, 1, "front", "noop", "mine", "normal", at_front=True),
        Attempt(4, 2, "front too", "noop", "mine", "normal", at_front=True),
    ]
    enqueue(attempts)
    ours = {a.rq_id: conn.hgetall(f"rq:job:{a.rq_id}") for a in attempts}
    our_order = conn.lrange("rq:queue:mine", 0, -1)
    conn.delete("rq:queue:mine", *(f"rq:job:{a.rq_id}" for a in attempts))

    from jobctl.config import get_settings

    settings = get_settings()
    reference = Queue("mine", connection=conn, serializer=queue.serializer())
    reference.enqueue_many(
        [
            reference.prepare_data(
                queue.DISPATCH,
                args=[a.job_id, a.number],
                timeout=a.timeout or settings.job_timeout,
                result_ttl=settings.result_ttl,
                failure_ttl=max(settings.result_ttl, 86_400),
                description=a.name,
                job_id=a.rq_id,
                meta={"jobctl_id": a.job_id, "task": a.task},
                at_front=a.at_front,
            )
            for a in attempts
        ]
    )
    for attempt in attempts:
        theirs = conn.hgetall(f"rq:job:{attempt.rq_id}")
        mine = ours[attempt.rq_id]
        for stamp in (b"created_at", b"enqueued_at"):
            assert mine.pop(stamp) and theirs.pop(stamp)
        assert mine == theirs, attempt
    assert our_order == conn.lrange("rq:queue:mine", 0, -1)
    assert conn.sismember("rq:queues", "rq:queue:mine")


def test_attempts_due_later_go_to_rqs_schedule(env):
    from jobctl import queue
    from jobctl.attempts import Attempt, enqueue

    due = datetime.now(UTC).replace(microsecond=500_000) + timedelta(minutes=5)
    enqueue(
        [
            Attempt(9, 1, "later", "noop", "default", "normal", due=due),
            Attempt(10, 1, "now", "noop", "default", "high"),
        ]
    )
    conn = queue.get_redis()
    assert conn.lrange("rq:queue:default-high", 0, -1) == [b"jobctl-10-1"]
    assert conn.llen("rq:queue:default") == 0
    ((member, score),) = conn.zrange("rq:scheduled:default", 0, -1, withscores=True)
    assert member == b"jobctl-9-1" and score == int(due.timestamp()) + 1


def test_a_bulk_job_can_still_be_cancelled_before_it_starts(cli, start_worker):
    out = cli("submit", "--from", "-", input=lines(*({"name": f"c{i}", "task": "noop"} for i in range(5))))
    ids = [int(i) for i in out.stdout.split()]
    assert cli("cancel", str(ids[2])).exit_code == 0
    worker = start_worker("--burst", wait=False)
    assert worker.proc.wait(60) == 0
    wait_for(lambda: all(j["status"] in ("completed", "cancelled") for j in rows(cli)))
    statuses = [j["status"] for j in rows(cli)]
    assert statuses == ["completed", "completed", "cancelled", "completed", "completed"]


def test_a_refused_bulk_write_is_the_database_error_sqlalchemy_would_raise(env):
    """COPY bypasses SQLAlchemy's execute: its errors are still SQLAlchemy's (the unique-key race
    handling in options.insert_jobs catches IntegrityError), and nothing of the batch is kept."""
    from sqlalchemy import exc as sa_exc

    from jobctl import store
    from jobctl.inserts import insert_values

    def row(name: str) -> dict:
        return {"name": name, "description": "", "task": "noop", "args": {}, "queue": "default"} | {
            "timeout": None,
            "retries": 0,
            "unique_key": "taken",
        }

    with store.begin() as conn:
        insert_values(conn, [row("holder")], lambda i: f"jobctl-{i}-1")
    with pytest.raises(sa_exc.IntegrityError), store.begin() as conn:
        insert_values(conn, [row("other"), row("second")], lambda i: f"jobctl-{i}-1")
    assert [j.name for j in listing.list_jobs()] == ["holder"]
