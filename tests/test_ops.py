"""The operator's commands: wait, stats, prune, list filters and output, ids from stdin, completion."""

from __future__ import annotations

import json
import subprocess
import sys
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
import sqlalchemy as sa

from tests.conftest import cli_env, submit


def ids_of(cli, *args: str) -> list[int]:
    out = cli("list", "-o", "ids", *args)
    assert out.exit_code == 0, out
    return [int(line) for line in out.stdout.split()]


def set_times(job_ids: list[int], **ages: timedelta) -> None:
    """Move rows' timestamps into the past: `completed=timedelta(days=10)` and so on."""
    from jobctl import store

    now = datetime.now(UTC)
    values = {f"{key}_at": now - age for key, age in ages.items()}
    if "completed_at" in values:
        values["updated_at"] = values["completed_at"]
    with store.begin() as conn:
        conn.execute(sa.update(store.JOB).where(store.JOB.c.id.in_(job_ids)).values(**values))


def test_wait_stats_and_prune_on_jobs_a_worker_ran(ops_env, cli, run, start_worker):
    from jobctl import queue, store

    start_worker()
    talk = submit(cli, "talk", "-t", "chatty", "-a", "lines=2")
    quiet = submit(cli, "quiet", "-t", "noop")
    bad = submit(cli, "bad", "-t", "boom", "-a", "message=it broke")
    idle = submit(cli, "idle", "-t", "noop", "-q", "idle")

    # wait: exit 0 only when every job completed; each outcome is reported as it comes.
    done = cli("wait", str(talk), str(quiet))
    assert done.exit_code == 0, done
    assert f"job {talk} completed" in done.stderr and f"job {quiet} completed" in done.stderr
    mixed = cli("wait", str(quiet), str(bad))
    assert mixed.exit_code == 1
    assert f"job {bad} failed: ValueError: it broke" in mixed.stderr
    piped = cli("wait", "-", "--json", input=f"{talk}\n{quiet}\n")
    assert piped.exit_code == 0
    assert [j["id"] for j in json.loads(piped.stdout)] == [talk, quiet]
    timed_out = cli("wait", str(idle), "--timeout", "0.3s")
    assert timed_out.exit_code == 1
    assert timed_out.stderr.strip().endswith(
        f"Error: timed out after 0.3s waiting for job(s) {idle} (pending)"
    )
    assert cli("wait", str(talk), "999").exit_code == 3
    assert cli("wait", str(talk), "--timeout", "soon").exit_code == 2

    # stats: figures for machines, charts for people.
    stats = json.loads(cli("stats", "--json").stdout)
    assert stats["counts"] == {"pending": 1, "processing": 0, "completed": 2, "failed": 1, "cancelled": 0}
    assert sum(stats["throughput"]["completed"]) == 2 and sum(stats["throughput"]["failed"]) == 1
    assert stats["throughput"]["bucket_seconds"] == 3600 and len(stats["throughput"]["completed"]) == 24
    by_task = {d["task"]: d for d in stats["durations"]}
    assert set(by_task) == {"chatty", "noop"}
    assert 0 <= by_task["noop"]["p50"] <= by_task["noop"]["p95"] <= by_task["noop"]["max"]
    queues = {q["name"]: q for q in stats["queues"]}
    assert queues["idle"] == {"name": "idle", "queued": 1, "pending": 1, "processing": 0}
    assert stats["workers"]["total"] == 1
    table = run("stats", "--since", "2h")
    assert table.returncode == 0, table.stderr
    for text in ("Jobs created (last 2h)", "Queues", "idle", "Workers: 1 live", "P95", "chatty"):
        assert text in table.stdout, text
    assert "█" in table.stdout and "▁" in table.stdout
    assert cli("stats", "--since", "yesterday-ish").exit_code == 2

    # prune: only terminal jobs that ended before the cutoff, with what Redis and job_log hold of them.
    set_times([talk, quiet], completed=timedelta(days=10))
    redis = queue.get_redis()
    assert redis.exists(f"rq:job:jobctl-{talk}-1", f"jobctl:log:jobctl-{talk}-1") == 2
    dry = cli("prune", "--older-than", "7d", "--dry-run")
    assert dry.exit_code == 0, dry
    assert "talk" in dry.stdout and "quiet" in dry.stdout and "bad" not in dry.stdout
    assert "Would delete 2 job(s) that ended more than 7d ago (completed 2)." in dry.stderr
    unconfirmed = cli("prune", "--older-than", "7d")
    assert unconfirmed.exit_code == 2 and "--yes" in unconfirmed.stderr
    assert cli("prune", "--older-than", "7d", "-s", "pending").exit_code == 2
    assert store.get_job(talk) is not None

    pruned = cli("prune", "--older-than", "7d", "--yes")
    assert pruned.exit_code == 0, pruned
    assert "Deleted 2 job(s) (completed 2)." in pruned.stderr
    assert cli("show", str(talk)).exit_code == 3 and cli("show", str(quiet)).exit_code == 3
    assert store.get_job(bad) is not None and store.get_job(idle) is not None
    assert redis.exists(f"rq:job:jobctl-{talk}-1", f"rq:job:jobctl-{quiet}-1") == 0
    assert redis.exists(f"jobctl:log:jobctl-{talk}-1", f"rq:results:jobctl-{talk}-1") == 0
    assert redis.zscore("rq:finished:default", f"jobctl-{talk}-1") is None
    with store.get_engine().connect() as conn:
        assert (
            conn.execute(sa.text("SELECT count(*) FROM job_log WHERE job_id = :i"), {"i": talk}).scalar() == 0
        )
    again = cli("prune", "--older-than", "7d", "--yes")
    assert again.exit_code == 0 and "Nothing to prune" in again.stderr


def test_prune_asks_before_deleting_on_a_terminal(env, cli):
    pexpect = pytest.importorskip("pexpect")
    old = [submit(cli, f"old {n}", "-q", "nowhere") for n in range(3)]
    assert cli("cancel", *map(str, old)).exit_code == 0
    set_times(old, completed=timedelta(days=3))

    def prune(answer: str) -> tuple[int, str]:
        child = pexpect.spawn(
            sys.executable, ["-m", "jobctl", "prune", "--older-than", "1d"], env=cli_env(), encoding="utf-8"
        )
        child.expect(r"Delete 3 job\(s\) that ended more than 1d ago \(cancelled 3\)\? \[y/N\]", timeout=30)
        child.sendline(answer)
        child.expect(pexpect.EOF, timeout=30)
        child.close()
        return child.exitstatus, child.before

    code, _ = prune("n")
    assert code == 1
    assert len(ids_of(cli)) == 3
    code, output = prune("y")
    assert code == 0 and "Deleted 3 job(s) (cancelled 3)." in output
    assert ids_of(cli) == []


def test_list_filters_sorts_and_prints_for_scripts(env, cli):
    backup = submit(cli, "Backup nightly", "-q", "nowhere")
    weekly = submit(cli, "backup_weekly", "-q", "nowhere")
    percent = submit(cli, "100% done", "-q", "nowhere")
    report = submit(cli, "report", "-q", "nowhere")
    set_times([backup], created=timedelta(days=3))
    set_times([weekly], started=timedelta(seconds=10), completed=timedelta(seconds=5))
    set_times([percent], started=timedelta(seconds=2), completed=timedelta(seconds=1))

    assert ids_of(cli) == [report, percent, weekly, backup]
    assert ids_of(cli, "--since", "1d") == [report, percent, weekly]
    since = (datetime.now(UTC) - timedelta(days=1)).isoformat()
    assert ids_of(cli, "--since", since) == [report, percent, weekly]
    assert ids_of(cli, "--name", "backup*") == [weekly, backup]  # any case
    assert ids_of(cli, "--name", "backup_*") == [weekly]  # _ and % are literal
    assert ids_of(cli, "--name", "100%*") == [percent]
    assert ids_of(cli, "--name", "rep?rt") == [report]
    assert ids_of(cli, "--sort", "id") == [backup, weekly, percent, report]
    assert ids_of(cli, "--sort", "-duration") == [weekly, percent, report, backup]
    assert ids_of(cli, "--sort", "duration,-id")[:2] == [percent, weekly]
    assert ids_of(cli, "--sort", "created", "--limit", "1") == [backup]

    lines = cli("list", "-o", "jsonl", "--name", "*weekly").stdout.splitlines()
    assert [json.loads(line)["name"] for line in lines] == ["backup_weekly"]
    assert [j["id"] for j in json.loads(cli("list", "--output", "json").stdout)] == [
        report,
        percent,
        weekly,
        backup,
    ]
    assert "Backup nightly" in cli("list", "-o", "table").stdout

    for args, message in (
        (["--sort", "colour"], "cannot sort by 'colour'"),
        (["--since", "soonish"], "invalid time 'soonish'"),
        (["-o", "xml"], "Invalid value for '-o'"),
        (["--watch", "-o", "ids"], "--watch draws the table"),
    ):
        out = cli("list", *args)
        assert out.exit_code == 2 and message in out.stderr, (args, out)


def test_name_search_through_the_index_finds_what_a_full_scan_finds(env, backend, cli, monkeypatch):
    from jobctl import listing, ops, service, store

    names = ["Nightly BACKUP 1", "nightly backup 2", "ÉCOLE run", "école run", "report 99_9", "report 9999"]
    names += ['say "hi" AND now', "say hi and now"]
    names += [f"filler {i}" for i in range(40)]
    jobs = service.submit_jobs([service.JobRequest(name=n, task="noop", queue="nowhere") for n in names])
    ids = {job.name: job.id for job in jobs}
    patterns = ["*backup*", "*BACKUP 1", "*école*", "*cole r*", "*99_9", "report 9?99", "*ill*", "fi*", "*9*"]
    patterns += ['*"hi" and*', "*hi and*"]  # not FTS5 query syntax: all literal
    patterns += [
        "NIGHTLY*",
        "école*",
        "ÉCOLE r?n",
        "say*AND now",
    ]  # a literal first: PostgreSQL's prefix index

    def found(pattern: str, **filters: Any) -> list[int]:
        filters = {"limit": 1000, **filters}
        return [j.id for j in listing.list_jobs(name_like=ops.glob_to_like(pattern), **filters)]

    assert cli("cancel", str(ids["filler 3"]), str(ids["filler 13"])).exit_code == 0
    combos: list[dict[str, Any]] = [
        {"statuses": ["cancelled"]},
        {"statuses": ["cancelled", "pending"], "limit": 5, "offset": 3},
        {"order": [("name", True)], "limit": 4, "offset": 2},
        {"task": "noop", "limit": 3, "offset": 10},
    ]

    def with_filters() -> list[list[int]]:
        return [found("*ill*", **filters) for filters in combos]

    through_index = {p: found(p) for p in patterns}
    filtered = with_filters()
    assert filtered[0] == [ids["filler 13"], ids["filler 3"]]
    assert found("*backup*", before=ids["nightly backup 2"]) == [ids["Nightly BACKUP 1"]]
    assert found("*backup*", since=datetime.now(UTC) - timedelta(hours=1)) == through_index["*backup*"]
    used = set()
    if backend == "sqlite":
        with store.get_engine().connect() as conn:
            used = {p for p in patterns if listing._sqlite_name_phrases(conn, ops.glob_to_like(p))}
    phrases = listing._sqlite_name_phrases
    monkeypatch.setattr(listing, "_sqlite_name_phrases", lambda *args: None)
    monkeypatch.setattr(listing, "_name_matches", lambda like, _: store.JOB.c.name.ilike(like, escape="\\"))
    assert through_index == {p: found(p) for p in patterns}
    assert filtered == with_filters()
    assert through_index["*backup*"] == [ids["nightly backup 2"], ids["Nightly BACKUP 1"]]
    assert through_index["*99_9"] == [ids["report 99_9"]]  # _ is literal
    assert through_index["report 9?99"] == [ids["report 9999"]]
    assert ids["école run"] in through_index["*école*"]
    assert through_index["NIGHTLY*"] == [ids["nightly backup 2"], ids["Nightly BACKUP 1"]]
    assert through_index["say*AND now"] == [ids["say hi and now"], ids['say "hi" AND now']]
    # SQLite looks names up in its trigram index (migration 0006) for patterns with three letters in a
    # row; PostgreSQL's planner uses its own (0005) by itself.
    expected = {"*backup*", "*BACKUP 1", "*école*", "*cole r*", "*ill*", "report 9?99"}
    expected |= {'*"hi" and*', "*hi and*", "NIGHTLY*", "école*", "ÉCOLE r?n", "say*AND now"}
    assert through_index['*"hi" and*'] == [ids['say "hi" AND now']]
    assert through_index["*hi and*"] == [ids["say hi and now"]]
    assert used == (expected if backend == "sqlite" else set())
    if backend == "sqlite":  # deleted and renamed rows leave the index as it should be
        job = store.JOB.c
        with store.begin() as conn:
            conn.execute(sa.delete(store.JOB).where(job.id == ids["report 9999"]))
            conn.execute(sa.update(store.JOB).where(job.id == ids["école run"]).values(name="renamed"))
            check = "INSERT INTO job_name_search(job_name_search, rank) VALUES ('integrity-check', 1)"
            conn.exec_driver_sql(check)  # compares the index with the table: fails if they differ
        assert found("*9999*") == [] and found("*renamed*") == [ids["école run"]]
        with store.begin() as conn:  # a SQLite built without FTS5 has no index: names are still found
            for trigger in ("insert", "delete", "update"):
                conn.exec_driver_sql(f"DROP TRIGGER job_name_search_{trigger}")
            conn.exec_driver_sql("DROP TABLE job_name_search")
        monkeypatch.setattr(listing, "_sqlite_name_phrases", phrases)
        assert found("*backup*") == through_index["*backup*"]


def test_cancel_and_retry_read_ids_piped_from_list(env, cli):
    jobs = [submit(cli, f"job {n}", "-q", "nowhere") for n in range(3)]

    def shell(pipeline: str) -> subprocess.CompletedProcess[str]:
        jobctl = f"{sys.executable} -m jobctl"
        return subprocess.run(
            pipeline.format(jobctl=jobctl),
            shell=True,
            capture_output=True,
            text=True,
            env=cli_env(),
            timeout=60,
        )

    cancelled = shell("{jobctl} list -s pending -o ids | {jobctl} cancel -")
    assert cancelled.returncode == 0, cancelled.stderr
    assert ids_of(cli, "-s", "cancelled") == sorted(jobs, reverse=True)
    retried = cli("retry", "-", input=cli("list", "-s", "cancelled", "-o", "ids").stdout)
    assert retried.exit_code == 0, retried
    assert ids_of(cli, "-s", "pending") == sorted(jobs, reverse=True)

    assert cli("cancel", "-", input="").exit_code == 2
    bad = cli("cancel", "-", input=f"{jobs[0]} seven\n")
    assert bad.exit_code == 2 and bad.stderr.strip() == "Error: invalid job id 'seven': ids are whole numbers"
    assert ids_of(cli, "-s", "pending") == sorted(jobs, reverse=True)  # nothing done on bad input
    mixed = cli("cancel", str(jobs[0]), "-", input=f"{jobs[1]}\n424242\n")
    assert mixed.exit_code == 3
    assert f"cancelled job {jobs[1]}" in mixed.stderr and "Error: job 424242 not found" in mixed.stderr


def test_completion_offers_ids_with_status_tasks_and_queues(env, cli, tmp_path):
    from jobctl.cli.params import (
        complete_active_id,
        complete_job_id,
        complete_queue,
        complete_retryable_id,
        complete_status,
        complete_task,
    )

    lines = "".join(json.dumps({"name": f"[b]job[/b] {n}", "queue": "nightly"}) + "\n" for n in range(12))
    ids = [int(i) for i in cli("submit", "--from", "-", input=lines).stdout.split()]
    assert cli("cancel", str(ids[0])).exit_code == 0

    everything = complete_job_id([], "")
    assert [int(v) for v, _ in everything] == sorted(ids, reverse=True)
    assert dict(everything)[str(ids[0])] == "cancelled  \\[b]job\\[/b] 0"
    assert [v for v, _ in complete_job_id([], "1")] == ["12", "11", "10", "1"]
    assert [v for v, _ in complete_retryable_id([], "")] == [str(ids[0])]
    active = [v for v, _ in complete_active_id(["12"], "1")]
    assert active == ["11", "10"]  # cancelled 1 and already typed 12 are left out
    assert complete_job_id([], "x") == []
    assert ("health_check", "Return a healthy status with the worker's current time.") in complete_task("he")
    assert complete_queue("ni") == ["nightly"]
    assert complete_queue("") == ["default", "nightly"]
    assert complete_status("fa") == ["failed"]

    def complete(words: str, **extra: str) -> subprocess.CompletedProcess[str]:
        env_vars = {
            "_JOBCTL_COMPLETE": "complete_bash",
            "COMP_WORDS": words,
            "COMP_CWORD": str(len(words.split(" ")) - 1),
            **extra,
        }
        return subprocess.run(
            [sys.executable, "-m", "jobctl"],
            capture_output=True,
            text=True,
            env=cli_env(env_vars),
            timeout=60,
        )

    real = complete("jobctl cancel 1")
    assert real.returncode == 0 and real.stderr == ""
    assert real.stdout.split() == ["12", "11", "10"]
    watched = complete("jobctl watch 1")
    assert watched.returncode == 0 and watched.stdout.split() == ["12", "11", "10"]

    # No database yet, or one that does not answer: no suggestions, no error, nothing created.
    fresh = tmp_path / "fresh"
    nothing = complete("jobctl show ", DATABASE_URL=f"sqlite:///{fresh / 'jobctl.db'}")
    assert (nothing.returncode, nothing.stdout.strip(), nothing.stderr) == (0, "", "")
    assert not fresh.exists()
    down = complete("jobctl show ", DATABASE_URL="postgresql://nobody@127.0.0.1:1/none")
    assert (down.returncode, down.stdout.strip(), down.stderr) == (0, "", "")


# ---------------------------------------------------------------- pure logic, no backends


def test_globs_sort_keys_buckets_and_charts():
    from jobctl.cli.charts import bar, sparkline
    from jobctl.errors import UsageError
    from jobctl.ops import glob_to_like, parse_sort
    from jobctl.stats import bucket_size

    assert glob_to_like("backup*") == "backup%"
    assert glob_to_like("a?c") == "a_c"
    assert glob_to_like("100%_x\\") == "100\\%\\_x\\\\"
    assert parse_sort("created") == [("created", False)]
    assert parse_sort("-duration, name") == [("duration", True), ("name", False)]
    with pytest.raises(UsageError, match="cannot sort by 'args'"):
        parse_sort("args")
    assert bucket_size(24 * 3600) == 3600
    assert bucket_size(3600) == 300
    assert bucket_size(30 * 86_400) == 2 * 86_400
    assert sparkline([0, 1, 7, 0]) == "▁▂█▁"
    assert sparkline([0, 0]) == "▁▁"
    assert bar(10, 10, width=4) == "████"
    assert bar(1, 16, width=4) == "▎"
    assert bar(0, 10) == ""


def test_progress_patterns_failure_text_and_worker_queues():
    from jobctl.errors import UsageError
    from jobctl.shell import ProgressPattern, failure_text, worker_queues

    assert ProgressPattern(r"(\d+)%").match("copying 42% done") == (42, 100)
    assert ProgressPattern(r"(\d+(?:\.\d+)?)%").match("12.5%") == (12, 100)
    assert ProgressPattern(r"(\d+)/(\d+)").match("file 3/7") == (3, 7)
    assert ProgressPattern(r"(?P<total>\d+) to go, (?P<current>\d+) done").match("9 to go, 2 done") == (2, 9)
    assert ProgressPattern(r"(\w+)%").match("abc%") is None
    assert ProgressPattern(r"(\d+)%").match("nothing here") is None
    for bad in ("(", "done", "(?P<total>\\d+)"):
        with pytest.raises(UsageError):
            ProgressPattern(bad)

    assert failure_text(2, []) == "command exited with status 2"
    assert failure_text(-9, []) == "command was killed by SIGKILL"
    assert failure_text(1, ["warming up", "", "fatal: no disk"]) == (
        "command exited with status 1: fatal: no disk\n\nstderr (last 2 lines):\nwarming up\nfatal: no disk"
    )

    assert worker_queues(["default"], allow_shell=False) == ["default"]
    assert worker_queues(["a", "b"], allow_shell=True) == ["a", "a.shell", "b", "b.shell"]
    assert worker_queues(["a.shell"], allow_shell=True) == ["a.shell"]
    with pytest.raises(UsageError, match="--allow-shell"):
        worker_queues(["default", "default.shell"], allow_shell=False)
